"""Residual CNN layouts against the spec's layer listings (spec §3)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from iris_core.config import IrisConfig
from iris_core.models.convnet import Downsample, FrameDecoder, FrameEncoder, ResidualBlock, Upsample


def layout(module: nn.Module) -> list[str]:
    """The spec's notation: RB(in→out), Down, Up, and the convs/norms at both ends."""
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


def test_crafter_tokenizer_encoder_and_decoder_match_the_spec() -> None:
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


def test_channels_last_gives_the_same_output() -> None:
    tok = IrisConfig().with_num_actions(17).tokenizer
    assert tok.frame_cnn.channels_last, "the presets run their CNNs in channels-last"
    encoder = FrameEncoder(tok.frame_cnn, in_channels=3).eval()
    contiguous = FrameEncoder(dataclasses.replace(tok.frame_cnn, channels_last=False), in_channels=3).eval()
    contiguous.load_state_dict(encoder.state_dict())
    assert encoder.layers[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert contiguous.layers[0].weight.is_contiguous()
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(encoder(x), contiguous(x), atol=1e-5, rtol=1e-4)


def test_rejects_wrong_input_channels() -> None:
    tok = IrisConfig().with_num_actions(17).tokenizer
    encoder = FrameEncoder(tok.frame_cnn, in_channels=3)
    with pytest.raises(AssertionError):
        encoder(torch.rand(1, 4, 64, 64))
