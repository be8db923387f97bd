"""Residual CNNs that every image network of Δ-IRIS is built from (spec §3).

``FrameEncoder`` maps frames to an 8×8 latent map, ``FrameDecoder`` maps such a map back to
frames. Both follow one ``FrameCnnConfig``: base width ``num_channels``, per-stage width
multipliers ``mult`` and a resolution change after stage i when ``down[i]``. There is no
attention in any CNN. Inputs are ``(N, C, H, W)``; callers flatten batch and time themselves.

The layers only use convolutions, GroupNorm and element-wise ops, so the memory layout does not
change the math: with ``channels_last`` (the default) weights and inputs are NHWC. For training,
each GN → SiLU → conv and upsample → conv keeps only its input for the backward pass
(``recomputed_conv``; in fp32 the upsample → conv is computed in sub-pixel form, see
``upsample_conv``), which is what keeps the full-resolution activations affordable. An encoder
can also re-run its full-resolution stem in the backward pass instead of keeping it
(``FrameEncoder.forward_recomputing_stem``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iris_core.config import FrameCnnConfig
from iris_core.models.recompute import with_recomputed_backward
from iris_core.models.recomputed_conv import (
    batch_chunks,
    concat_batch,
    conv_of,
    keeps_activations,
    norm_act_conv,
)


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
    """Doubles the resolution: nearest-neighbour ×2, then a 3×3 convolution.

    In fp32 this is computed without building the upsampled map (:func:`upsample_conv`): the
    same function in 2.25× fewer multiply-adds. In bf16/fp16 the summed kernels would be rounded
    once more, which measurably loses gradient accuracy, so there the upsampled map is built
    (and recomputed for the backward pass instead of kept).
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if _reduced_precision(x):
            # The upsampled map is 4× larger than x: recomputed for the backward pass, not kept.
            return conv_of(_upsample, (), self.conv, x, growth=4)
        if (
            keeps_activations()
            or not torch.is_grad_enabled()
            or not (x.requires_grad or self.conv.weight.requires_grad)
        ):
            return upsample_conv(x, self.conv)
        # Under autograd, batch chunks keep every temporary small (see ``batch_chunks``); each
        # chunk's convolution saves only its (padded) input. The summed kernels are made once.
        chunks = batch_chunks(x.size(0), 4 * x[0].nbytes * max(1, -(-self.conv.out_channels // x.size(1))))
        weight = sub_pixel_weight(self.conv)
        return concat_batch([upsample_conv(x[chunk], self.conv, weight) for chunk in chunks])


def _reduced_precision(x: Tensor) -> bool:
    """Whether a convolution of ``x`` computes in bf16/fp16 (by its dtype or by autocast)."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type) in (torch.bfloat16, torch.float16)
    return x.dtype in (torch.bfloat16, torch.float16)


def _upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


# Sub-pixel form of a 3×3 convolution after nearest ×2 upsampling. Output pixel (2i + a, 2j + b)
# reads upsampled rows 2i + a − 1 .. 2i + a + 1, i.e. input rows (i − 1, i) when a = 0 and (i, i + 1)
# when a = 1; kernel rows landing on the same input row are summed. _PHASE_TAPS[a] maps the 3
# kernel rows (or columns) onto the 2 input rows (or columns) of phase a. Zero padding of the
# upsampled map is zero padding of the input, so borders are exact too.
_PHASE_TAPS = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))


_phase_taps_cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _phase_taps(dtype: torch.dtype, device: torch.device) -> Tensor:
    """``_PHASE_TAPS`` as a tensor, made once per dtype and device (no host-to-device copy per call)."""
    key = (dtype, device)
    if key not in _phase_taps_cache:
        _phase_taps_cache[key] = torch.tensor(_PHASE_TAPS, dtype=dtype, device=device)
    return _phase_taps_cache[key]


def sub_pixel_weight(conv: nn.Conv2d) -> Tensor:
    """The 2×2 kernels of the four output phases, ``(4·out, in, 2, 2)``: phase k = 2a + b owns
    channels k·out .. (k+1)·out (differentiable in ``conv.weight``)."""
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1), conv
    assert conv.groups == 1 and conv.dilation == (1, 1), conv
    taps = _phase_taps(conv.weight.dtype, conv.weight.device)
    return torch.einsum("apk,bql,oikl->aboipq", taps, taps, conv.weight).flatten(0, 2)


def upsample_conv(x: Tensor, conv: nn.Conv2d, weight: Tensor | None = None) -> Tensor:
    """``conv(interpolate(x, scale_factor=2, mode="nearest"))`` for a 3×3, stride-1, padding-1 conv.

    One 2×2 convolution over the 1-padded input computes the four output phases (a, b) as four
    groups of output channels, with kernels summed from ``conv.weight`` (16 taps per input pixel
    instead of 36); the phases are then interleaved into the ×2 map. Same value up to rounding.
    ``weight``: ``sub_pixel_weight(conv)`` when the caller already has it.
    """
    weight = sub_pixel_weight(conv) if weight is None else weight
    n, _, h, w = x.shape
    out_channels = conv.out_channels
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    bias = None if conv.bias is None else conv.bias.repeat(4)
    phases = F.conv2d(F.pad(x, (1, 1, 1, 1)), weight.contiguous(memory_format=layout), bias)
    shape = (n, out_channels, 2 * h, 2 * w)
    out = torch.empty(shape, dtype=phases.dtype, device=x.device, memory_format=layout)
    for a in (0, 1):
        for b in (0, 1):
            k = 2 * a + b
            out[:, :, a::2, b::2] = phases[:, k * out_channels : (k + 1) * out_channels, a : a + h, b : b + w]
    return out


def _check_input(x: Tensor, channels: int) -> None:
    assert x.ndim == 4 and x.size(1) == channels, f"expected (N, {channels}, H, W), got {tuple(x.shape)}"


def _run(layers: nn.Sequential, x: Tensor, channels_last: bool, head: bool = True) -> Tensor:
    """``layers`` in order; with ``head``, the final GN → SiLU → conv saves only its input (see
    ``norm_act_conv``)."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if not head:
        for layer in layers:
            x = layer(x)
        return x
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
        return self._forward(self.layers, x, self.map_shapes, head=True)

    def _forward(
        self, layers: nn.Sequential, x: Tensor, map_shapes: list[tuple[int, float]], head: bool
    ) -> Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in layers.parameters())):
            return _run(layers, x, self.channels_last, head)
        height, width = x.shape[-2:]
        largest = max(c * int(height * scale) * int(width * scale) for c, scale in map_shapes)
        chunks = batch_chunks(x.size(0), largest * max(x.element_size(), 2))
        return concat_batch([_run(layers, x[chunk], self.channels_last, head) for chunk in chunks])


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
        # The stem: every layer at the input resolution, up to and including the first downsample.
        downsamples = [i for i, layer in enumerate(layers) if isinstance(layer, Downsample)]
        self.num_stem_layers = downsamples[0] + 1 if downsamples else 0
        self._finish(layers, width, config.latent_dim, config)

    @property
    def stem_parameters(self) -> tuple[Tensor, ...]:
        return tuple(self._layer_range(0, self.num_stem_layers).parameters())

    def stem(self, x: Tensor) -> Tensor:
        """The full-resolution layers (where most of the activation memory is): ``forward(x)``
        equals ``rest(stem(x))``. Without autograd, runs in batch chunks like ``forward``."""
        _check_input(x, self.in_channels)
        if self.num_stem_layers == 0:
            return x
        full_resolution = [(c, scale) for c, scale in self.map_shapes if scale == 1.0]
        return self._forward(self._layer_range(0, self.num_stem_layers), x, full_resolution, head=False)

    def _layer_range(self, start: int, stop: int) -> nn.Sequential:
        # A view on some of ``layers`` (the modules are shared, nothing is registered twice).
        return nn.Sequential(*(self.layers[i] for i in range(start, stop)))

    def rest(self, h: Tensor) -> Tensor:
        """The layers after :meth:`stem`."""
        lower_resolution = [(c, scale * 2) for c, scale in self.map_shapes if scale < 1.0] or self.map_shapes
        stop = len(self.layers)
        return self._forward(self._layer_range(self.num_stem_layers, stop), h, lower_resolution, head=True)

    def forward_recomputing_stem(self, x: Tensor, frames_per_chunk: int) -> Tensor:
        """``forward(x)`` for a backward pass that keeps only the activations below full resolution.

        The stem runs without autograd and is re-run in the backward pass, ``frames_per_chunk``
        frames at a time (``recompute.with_recomputed_backward``); the other layers keep their
        activations as usual. Same values and gradients as ``forward``; the stem holds about 40%
        of the FLOPs and most of the activation memory, so this trades a partial forward pass
        for that memory. Without autograd it is ``forward``.
        """
        with torch.no_grad():
            h = self.stem(x)
        h = with_recomputed_backward(self.stem, x, h, self.stem_parameters, frames_per_chunk)
        return self.rest(h)


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
