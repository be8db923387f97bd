"""Residual CNNs that every image network of Δ-IRIS is built from (docs/models.md §1).

``FrameEncoder`` maps frames to an 8×8 latent map, ``FrameDecoder`` maps such a map back to
frames. Both follow one ``FrameCnnConfig``: base width ``num_channels``, per-stage width
multipliers ``mult`` and a resolution change after stage i when ``down[i]``. There is no
attention in any CNN, as in the reference code. Inputs are ``(N, C, H, W)``; callers flatten batch
and time themselves.

These are the plain modules: device-specific layouts, kernels and activation checkpointing are
applied from outside by ``iris_core.models.runtime`` and never change the maths.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from iris_core.config import FrameCnnConfig


class ResidualBlock(nn.Module):
    """x + f(x) with f = GN → SiLU → 3×3 conv → GN → SiLU → 3×3 conv (1×1 conv skip when widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.GroupNorm(norm_groups, in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.GroupNorm(norm_groups, out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
        )
        self.skip_projection: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, kernel_size=1)
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.skip_projection(x) + self.f(x)
        return out


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
        out: Tensor = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return out


def _head(width: int, out_channels: int, config: FrameCnnConfig) -> list[nn.Module]:
    """GN → SiLU → 3×3 conv at the end of every encoder and decoder."""
    return [
        nn.GroupNorm(config.norm_groups, width),
        nn.SiLU(),
        nn.Conv2d(width, out_channels, kernel_size=3, padding=1),
    ]


class FrameEncoder(nn.Module):
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
        width = config.num_channels
        for mult, down in zip(config.mult, config.down, strict=True):
            layers.append(ResidualBlock(width, mult * config.num_channels, config.norm_groups))
            width = mult * config.num_channels
            if down:
                layers.append(Downsample(width))
        self.layers = nn.Sequential(*layers, *_head(width, config.latent_dim, config))

    def forward(self, x: Tensor) -> Tensor:
        assert x.ndim == 4 and x.size(1) == self.in_channels, tuple(x.shape)
        out: Tensor = self.layers(x)
        return out


class FrameDecoder(nn.Module):
    """``(N, latent_dim, h, w)`` → ``(N, out_channels, h·2^d, w·2^d)``: the mirror of ``FrameEncoder``.

    Stages run in reverse order; stage i maps ``mult[i]·C`` channels to ``mult[i-1]·C`` (C for the
    first stage) and is preceded by an upsample when ``down[i]``. Crafter tokenizer decoder:
    3×3 conv 76→256; RB(256→128), Up, RB(128→128), Up, RB(128→64), RB(64→64), Up, RB(64→64);
    GN + SiLU + 3×3 conv 64→3. The output is linear: clamping belongs to the caller.
    """

    def __init__(self, config: FrameCnnConfig, out_channels: int) -> None:
        super().__init__()
        assert config.latent_dim is not None, "a decoder needs its input width latent_dim"
        self.in_channels = config.latent_dim
        self.out_channels = out_channels
        widths = [m * config.num_channels for m in config.mult]
        stage_outputs = [config.num_channels, *widths[:-1]]
        layers: list[nn.Module] = [nn.Conv2d(config.latent_dim, widths[-1], kernel_size=3, padding=1)]
        for i in reversed(range(len(widths))):
            # Where encoder stage i was followed by a downsample, decoder stage i is preceded by
            # an upsample at the same width.
            if config.down[i]:
                layers.append(Upsample(widths[i]))
            layers.append(ResidualBlock(widths[i], stage_outputs[i], config.norm_groups))
        self.layers = nn.Sequential(*layers, *_head(config.num_channels, out_channels, config))

    def forward(self, x: Tensor) -> Tensor:
        assert x.ndim == 4 and x.size(1) == self.in_channels, tuple(x.shape)
        out: Tensor = self.layers(x)
        return out
