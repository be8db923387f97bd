"""Residual CNN layouts against the paper's layer listings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from iris_core.config import IrisConfig
from iris_core.models.convnet import (
    Downsample,
    FrameDecoder,
    FrameEncoder,
    ResidualBlock,
    Upsample,
)


def layout(module: nn.Module) -> list[str]:
    """The layer notation of docs/models.md: RB(in→out), Down, Up, and the convs/norms at both ends."""
    names = []
    for layer in module.layers:  # type: ignore[union-attr]
        if isinstance(layer, ResidualBlock):
            conv = layer.f[2]
            names.append(f"RB({conv.in_channels}→{conv.out_channels})")
        elif isinstance(layer, Downsample):
            names.append("Down")
        elif isinstance(layer, Upsample):
            names.append("Up")
        elif isinstance(layer, nn.Conv2d):
            names.append(f"conv{layer.kernel_size[0]}({layer.in_channels}→{layer.out_channels})")
        elif isinstance(layer, nn.GroupNorm):
            names.append(f"GN{layer.num_groups}")
        else:
            names.append(type(layer).__name__)
    return names


def test_crafter_tokenizer_encoder_and_decoder_match_the_paper() -> None:
    tok = IrisConfig().with_num_actions(17).tokenizer
    encoder = FrameEncoder(tok.encoder, in_channels=tok.encoder_in_channels)
    assert layout(encoder) == [
        "conv3(7→64)", "RB(64→64)", "Down", "RB(64→64)", "RB(64→128)", "Down", "RB(128→128)", "Down",
        "RB(128→256)", "GN32", "SiLU", "conv3(256→64)",
    ]  # fmt: skip
    decoder = FrameDecoder(tok.decoder, out_channels=3)
    assert layout(decoder) == [
        "conv3(76→256)", "RB(256→128)", "Up", "RB(128→128)", "Up", "RB(128→64)", "RB(64→64)", "Up",
        "RB(64→64)", "GN32", "SiLU", "conv3(64→3)",
    ]  # fmt: skip
    x = torch.rand(2, 7, 64, 64)
    z = encoder(x)
    assert z.shape == (2, 64, 8, 8)
    assert decoder(torch.rand(2, 76, 8, 8)).shape == (2, 3, 64, 64)


def test_residual_block_skip_is_identity_only_for_equal_widths() -> None:
    assert isinstance(ResidualBlock(32, 32, 32).skip_projection, nn.Identity)
    skip = ResidualBlock(32, 64, 32).skip_projection
    assert isinstance(skip, nn.Conv2d) and skip.kernel_size == (1, 1)
    down = Downsample(8).conv
    assert down.kernel_size == (2, 2) and down.stride == (2, 2)


def test_frame_cnn_sizes_of_both_presets() -> None:
    crafter = IrisConfig().with_num_actions(17)
    assert FrameEncoder(crafter.tokenizer.frame_cnn, 3)(torch.rand(1, 3, 64, 64)).shape == (1, 8, 8, 8)
    assert FrameEncoder(crafter.world_model.frame_cnn, 3)(torch.rand(1, 3, 64, 64)).shape == (1, 8, 8, 8)
    wm_cnn = FrameEncoder(crafter.world_model.frame_cnn, 3)
    assert layout(wm_cnn)[0] == "conv3(3→32)" and "RB(64→128)" in layout(wm_cnn)


def test_rejects_wrong_input_channels() -> None:
    tok = IrisConfig().with_num_actions(17).tokenizer
    encoder = FrameEncoder(tok.frame_cnn, in_channels=3)
    with pytest.raises(AssertionError):
        encoder(torch.rand(1, 4, 64, 64))


def test_residual_block_is_its_formula() -> None:
    """x + f(x) with f = conv(SiLU(GN(conv(SiLU(GN(x)))))), the skip a 1×1 conv across widths."""
    torch.manual_seed(0)
    block = ResidualBlock(8, 12, 4).double()
    x = torch.randn(3, 8, 5, 6, dtype=torch.float64)
    norm1, _, conv1, norm2, _, conv2 = block.f
    nn.init.normal_(norm1.weight)
    nn.init.normal_(norm2.bias)
    silu = nn.functional.silu
    expected = block.skip_projection(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))
    torch.testing.assert_close(block(x), expected, rtol=0, atol=0)
    # GroupNorm by hand: statistics per (frame, group of 2 channels) over the group's pixels.
    groups = x.view(3, 4, 2 * 5 * 6)
    hand = (groups - groups.mean(-1, keepdim=True)) / (
        groups.var(-1, unbiased=False, keepdim=True) + 1e-5
    ).sqrt()
    hand = hand.view_as(x) * norm1.weight.view(1, 8, 1, 1) + norm1.bias.view(1, 8, 1, 1)
    torch.testing.assert_close(norm1(x), hand)


def test_upsample_is_nearest_then_conv() -> None:
    torch.manual_seed(0)
    up = Upsample(3).double()
    x = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    repeated = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(up(x), up.conv(repeated), rtol=0, atol=0)
