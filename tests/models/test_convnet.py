"""Residual CNN layouts against the spec's layer listings (spec §3)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from iris_core.config import FrameCnnConfig, IrisConfig
from iris_core.models.convnet import (
    Downsample,
    FrameDecoder,
    FrameEncoder,
    ResidualBlock,
    Upsample,
    upsample_conv,
)


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


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsample_conv_equals_upsampling_then_convolving(channels_last: bool) -> None:
    """The sub-pixel form against the definition, in float64, on a non-square map: every output
    phase, the borders (zero padding) and the gradients of input, weight and bias."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, kernel_size=3, padding=1).double()
    x = torch.randn(2, 3, 4, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        conv = conv.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def output_and_grads(fn: object) -> list[torch.Tensor]:
        conv.zero_grad(set_to_none=True)
        inp = x.detach().requires_grad_()
        out = fn(inp)  # type: ignore[operator]
        (out * torch.arange(out.numel(), dtype=out.dtype).view(out.shape).sin()).sum().backward()
        assert inp.grad is not None and conv.weight.grad is not None and conv.bias is not None
        return [out, inp.grad, conv.weight.grad, conv.bias.grad]

    def definition(t: torch.Tensor) -> torch.Tensor:
        return conv(nn.functional.interpolate(t, scale_factor=2.0, mode="nearest"))  # type: ignore[no-any-return]

    expected = output_and_grads(definition)
    actual = output_and_grads(lambda t: upsample_conv(t, conv))
    assert actual[0].shape == (2, 5, 8, 14)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert actual[0].is_contiguous(memory_format=layout)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_upsample_uses_the_sub_pixel_form_only_in_full_precision() -> None:
    """fp32: 16 instead of 36 multiply-adds per input pixel (plus the padded border); under bf16
    autocast the kernels are not summed (their rounding would cost gradient accuracy)."""
    torch.manual_seed(0)
    up = Upsample(8)
    x = torch.randn(2, 8, 8, 8)

    def conv_flops() -> int:
        with FlopCounterMode(display=False) as counter:
            up(x)
        return int(counter.get_flop_counts()["Global"][torch.ops.aten.convolution])

    direct = 2 * 2 * 8 * 8 * 9 * (16 * 16)  # 3×3 conv over the upsampled 16×16 map
    assert conv_flops() == 2 * 2 * (4 * 8) * 8 * 4 * (9 * 9)  # one 2×2 conv, 4 phases, 9×9 positions
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv_flops() == direct


def test_recomputing_the_stem_keeps_no_full_resolution_map() -> None:
    """``forward_recomputing_stem`` saves no map at the input resolution for the backward pass
    (only the input frames), while a plain forward saves several; values are the same."""
    torch.manual_seed(0)
    config = FrameCnnConfig(num_channels=8, mult=(1, 2), down=(1, 1), latent_dim=4, norm_groups=4)
    encoder = FrameEncoder(config, 3)
    assert encoder.num_stem_layers == 3  # conv, RB, Down
    x = torch.rand(4, 3, 16, 16)

    def full_resolution_saved(fn: object) -> tuple[torch.Tensor, int]:
        count = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal count
            if t.ndim == 4 and t.shape[-2:] == (16, 16) and t.data_ptr() != x.data_ptr():
                count += 1
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn(x)  # type: ignore[operator]
        return out, count

    plain, plain_count = full_resolution_saved(encoder)
    recomputed, count = full_resolution_saved(lambda t: encoder.forward_recomputing_stem(t, 2))
    assert plain_count >= 3 and count == 0, (plain_count, count)
    torch.testing.assert_close(recomputed, plain, rtol=0, atol=0)
