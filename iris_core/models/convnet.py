"""Residual CNNs that every image network of Δ-IRIS is built from (spec §3).

``FrameEncoder`` maps frames to an 8×8 latent map, ``FrameDecoder`` maps such a map back to
frames. Both follow one ``FrameCnnConfig``: base width ``num_channels``, per-stage width
multipliers ``mult`` and a resolution change after stage i when ``down[i]``. There is no
attention in any CNN. Inputs are ``(N, C, H, W)``; callers flatten batch and time themselves.

The layers only use convolutions, GroupNorm and element-wise ops, so the memory layout does not
change the math: with ``channels_last`` (the default) weights and inputs are NHWC. For training,
each GN → SiLU → conv and upsample → conv keeps only its input for the backward pass
(``recomputed_conv``), which is what keeps the full-resolution activations affordable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iris_core.config import FrameCnnConfig
from iris_core.models.recomputed_conv import batch_chunks, concat_batch, conv_of, norm_act_conv


class ResidualBlock(nn.Module):
    """GN → SiLU → 3×3 conv → GN → SiLU → 3×3 conv, plus a skip (1×1 conv when widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.GroupNorm(norm_groups, in_channels),
            nn.SiLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.GroupNorm(norm_groups, out_channels),
            nn.SiLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        )
        self.skip_projection: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, kernel_size=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        norm1, _, conv1, norm2, _, conv2 = self.f
        h = norm_act_conv(x, norm1, conv1)
        out = norm_act_conv(h, norm2, conv2)
        skip: Tensor = self.skip_projection(x)
        if out.dtype != skip.dtype:  # keep the promotion of a plain sum
            return skip + out
        # In place (autograd allows it: nothing saved the conv's output): one map fewer to allocate.
        return out.add_(skip)


class Downsample(nn.Module):
    """Halves the resolution with a learned 2×2 stride-2 convolution (no pooling)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(num_channels, num_channels, kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        return out


class Upsample(nn.Module):
    """Doubles the resolution: nearest-neighbour ×2, then a 3×3 convolution."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # The upsampled map is 4× larger than x: recomputed for the backward pass, not kept.
        return conv_of(_upsample, (), self.conv, x, growth=4)


def _upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def _check_input(x: Tensor, channels: int) -> None:
    assert x.ndim == 4 and x.size(1) == channels, f"expected (N, {channels}, H, W), got {tuple(x.shape)}"


def _run(layers: nn.Sequential, x: Tensor, channels_last: bool) -> Tensor:
    """``layers`` in order; the final GN → SiLU → conv saves only its input (see ``norm_act_conv``)."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    *body, norm, _, conv = layers
    for layer in body:
        x = layer(x)
    return norm_act_conv(x, norm, conv)


class _FrameCnn(nn.Module):
    """What encoder and decoder share: the GN → SiLU → 3×3 conv head, the layout, ``forward``.

    Without autograd (inference: encoding in the world-model step, imagination, acting) the
    whole network runs on batch chunks, so that only one chunk's maps exist at a time.
    """

    in_channels: int
    # (channels, resolution relative to the input) of every map the layers produce.
    map_shapes: list[tuple[int, float]]

    def _finish(self, layers: list[nn.Module], width: int, out_channels: int, config: FrameCnnConfig) -> None:
        layers += [
            nn.GroupNorm(config.norm_groups, width),
            nn.SiLU(inplace=True),
            nn.Conv2d(width, out_channels, kernel_size=3, padding=1),
        ]
        self.layers = nn.Sequential(*layers)
        self.channels_last = config.channels_last
        if config.channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.in_channels)
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return _run(self.layers, x, self.channels_last)
        height, width = x.shape[-2:]
        largest = max(c * int(height * scale) * int(width * scale) for c, scale in self.map_shapes)
        chunks = batch_chunks(x.size(0), largest * max(x.element_size(), 2))
        return concat_batch([_run(self.layers, x[chunk], self.channels_last) for chunk in chunks])


class FrameEncoder(_FrameCnn):
    """``(N, in_channels, H, W)`` → ``(N, latent_dim, H / 2^d, W / 2^d)``, d = number of downsamples.

    Crafter tokenizer encoder: 3×3 conv 7→64; RB(64→64), Down, RB(64→64), RB(64→128), Down,
    RB(128→128), Down, RB(128→256); GN + SiLU + 3×3 conv 256→64.
    """

    def __init__(self, config: FrameCnnConfig, in_channels: int) -> None:
        super().__init__()
        assert config.latent_dim is not None, "an encoder needs its output width latent_dim"
        self.in_channels = in_channels
        self.out_channels = config.latent_dim
        layers: list[nn.Module] = [nn.Conv2d(in_channels, config.num_channels, kernel_size=3, padding=1)]
        width, scale = config.num_channels, 1.0
        self.map_shapes = [(width, scale)]
        for mult, down in zip(config.mult, config.down, strict=True):
            stage_width = mult * config.num_channels
            layers.append(ResidualBlock(width, stage_width, config.norm_groups))
            width = stage_width
            self.map_shapes.append((width, scale))
            if down:
                layers.append(Downsample(width))
                scale /= 2
        self._finish(layers, width, config.latent_dim, config)


class FrameDecoder(_FrameCnn):
    """``(N, latent_dim, h, w)`` → ``(N, out_channels, h·2^d, w·2^d)``: the mirror of ``FrameEncoder``.

    Stages run in reverse order; stage i maps ``mult[i]·C`` channels to ``mult[i-1]·C`` (C for the
    first stage) and is preceded by an upsample when ``down[i]``. Crafter tokenizer decoder:
    3×3 conv 76→256; RB(256→128), Up, RB(128→128), Up, RB(128→64), RB(64→64), Up, RB(64→64);
    GN + SiLU + 3×3 conv 64→3. The output is linear: clamping belongs to the caller (spec §10.6).
    """

    def __init__(self, config: FrameCnnConfig, out_channels: int) -> None:
        super().__init__()
        assert config.latent_dim is not None, "a decoder needs its input width latent_dim"
        self.in_channels = config.latent_dim
        self.out_channels = out_channels
        widths = [m * config.num_channels for m in config.mult]
        stage_outputs = [config.num_channels, *widths[:-1]]
        layers: list[nn.Module] = [nn.Conv2d(config.latent_dim, widths[-1], kernel_size=3, padding=1)]
        scale = 1.0
        self.map_shapes = [(widths[-1], scale)]
        for i in reversed(range(len(widths))):
            # Mirror of the encoder: where stage i was followed by a downsample, it is now
            # preceded by an upsample at the same width.
            if config.down[i]:
                layers.append(Upsample(widths[i]))
                scale *= 2
            layers.append(ResidualBlock(widths[i], stage_outputs[i], config.norm_groups))
            self.map_shapes += [(widths[i], scale), (stage_outputs[i], scale)]
        self._finish(layers, config.num_channels, out_channels, config)
