"""The memory-saving CNN forward (inputs saved, GN/SiLU/upsampling recomputed) changes no number."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iris_core.config import FrameCnnConfig
from iris_core.models import convnet, recomputed_conv
from iris_core.models.convnet import FrameDecoder, FrameEncoder, ResidualBlock, Upsample

CONFIG = FrameCnnConfig(num_channels=8, mult=(1, 2), down=(1, 1), latent_dim=6, norm_groups=4)


def plain_forward(module: nn.Module, x: Tensor) -> Tensor:
    """The layers with plain autograd (every activation saved, torch's own GroupNorm backward)."""
    for layer in module.layers:
        if isinstance(layer, ResidualBlock):
            x = layer.f(x) + layer.skip_projection(x)
        elif isinstance(layer, Upsample):
            x = layer.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        else:
            x = layer(x)
    return x


def output_and_grads(module: nn.Module, x: Tensor, plain: bool) -> list[Tensor]:
    """Output and gradients of a fixed random projection of it; ``plain``: the un-optimised
    oracle ``plain_forward``."""
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out = plain_forward(module, x) if plain else module(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out.float() * weights).sum().backward()
    assert x.grad is not None
    return [out, x.grad, *(p.grad for p in module.parameters() if p.grad is not None)]


def assert_same_math(actual: Tensor, expected: Tensor) -> None:
    """Equal up to fp32 summation order (GroupNorm backward layouts, chunked weight gradients):
    errors of a few ulps of the tensor's largest entry."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=4e-6 * scale)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_same_output_and_gradients_as_plain_autograd_in_fp32(kind: str, channels_last: bool) -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(CONFIG, channels_last=channels_last)
    module: nn.Module = FrameEncoder(config, 5) if kind == "encoder" else FrameDecoder(config, 3)
    x = torch.randn(3, 5, 16, 16) if kind == "encoder" else torch.randn(3, 6, 4, 4)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = output_and_grads(module, x, plain=True)
    actual = output_and_grads(module, x, plain=False)
    assert len(actual) == len(expected) == 2 + len(list(module.parameters()))
    for a, e in zip(actual, expected, strict=True):
        assert_same_math(a, e)


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_keeping_activations_is_plain_autograd_with_the_same_math(kind: str) -> None:
    """Inside ``keeping_activations`` no convolution saves only its input (the graph holds
    torch's own convolution nodes, no ``_ConvOfPrepared``) and nothing changes numerically."""
    torch.manual_seed(0)
    module: nn.Module = FrameEncoder(CONFIG, 5) if kind == "encoder" else FrameDecoder(CONFIG, 3)
    x = torch.randn(3, 5, 16, 16) if kind == "encoder" else torch.randn(3, 6, 4, 4)
    expected = output_and_grads(module, x, plain=True)
    assert not recomputed_conv.keeps_activations()
    with recomputed_conv.keeping_activations():
        assert recomputed_conv.keeps_activations()
        actual = output_and_grads(module, x, plain=False)
        out = module(x.requires_grad_())
    assert not recomputed_conv.keeps_activations()
    for a, e in zip(actual, expected, strict=True):
        assert_same_math(a, e)
    names = graph_node_names(out)
    assert "_ConvOfPreparedBackward" not in names and "ConvolutionBackward0" in names, names
    assert "_ConvOfPreparedBackward" in graph_node_names(module(x))


def graph_node_names(out: Tensor) -> set[str]:
    names, stack, seen = set(), [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack += [next_node for next_node, _ in node.next_functions]
    return names


def test_batch_chunks_are_balanced_and_cover_the_batch() -> None:
    chunk = recomputed_conv.CHUNK_BYTES
    assert recomputed_conv.batch_chunks(5, chunk // 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert recomputed_conv.batch_chunks(5, chunk // 5) == [slice(0, 5)]
    assert recomputed_conv.batch_chunks(3, 10 * chunk) == [slice(0, 1), slice(1, 2), slice(2, 3)]


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_batch_chunks_change_no_number(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training and inference on maps split into uneven batch chunks give the same numbers."""
    torch.manual_seed(0)
    module: nn.Module = FrameEncoder(CONFIG, 5) if kind == "encoder" else FrameDecoder(CONFIG, 3)
    x = torch.randn(5, 5, 16, 16) if kind == "encoder" else torch.randn(5, 6, 4, 4)
    expected = output_and_grads(module, x, plain=True)
    calls: list[int] = []
    real_batch_chunks = recomputed_conv.batch_chunks

    def spy(n: int, bytes_per_frame: int) -> list[slice]:
        chunks = real_batch_chunks(n, bytes_per_frame)
        calls.append(len(chunks))
        return chunks

    # About two frames of the widest full-resolution map per chunk: chunks of 2, 2, 1 frames.
    monkeypatch.setattr(recomputed_conv, "CHUNK_BYTES", 2 * 8 * 16 * 16 * 4)
    monkeypatch.setattr(recomputed_conv, "batch_chunks", spy)
    monkeypatch.setattr(convnet, "batch_chunks", spy)
    actual = output_and_grads(module, x, plain=False)
    assert max(calls) >= 3
    for a, e in zip(actual, expected, strict=True):
        assert_same_math(a, e)
    with torch.no_grad():
        calls.clear()
        inference = module(x)
        assert calls and min(calls) > 1  # the whole network ran chunk by chunk
    assert_same_math(inference, expected[0])


@pytest.mark.parametrize("size", [6, 33])  # forward through the contiguous layout, and not
@pytest.mark.parametrize("num_groups", [4, 16])  # 4 channels per group, and 1
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_group_norm_matches_a_float64_oracle(
    dtype: torch.dtype, num_groups: int, size: int
) -> None:
    torch.manual_seed(0)
    x = (torch.randn(4, 16, size, size) * 3 + 1).to(dtype).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(16, requires_grad=True), torch.randn(16, requires_grad=True)
    grad = torch.randn(4, 16, size, size).to(dtype).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out = recomputed_conv.group_norm(x, num_groups, weight, bias, 1e-5)
    actual = [out, *torch.autograd.grad(out, (x, weight, bias), grad)]
    assert out.dtype == dtype and actual[1].is_contiguous(memory_format=torch.channels_last)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    out64 = F.group_norm(x64, num_groups, w64, b64, 1e-5)
    expected = [out64, *torch.autograd.grad(out64, (x64, w64, b64), grad.double())]
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a.double(), e, rtol=tolerance, atol=tolerance * e.abs().max().item())


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_bf16_autocast_is_as_accurate_as_plain_autograd(kind: str) -> None:
    """Under bf16 autocast, output and gradients are as close to the fp32 values as those of
    plain autograd under the same autocast (rounding differs, accuracy must not)."""
    torch.manual_seed(0)
    module: nn.Module = FrameEncoder(CONFIG, 5) if kind == "encoder" else FrameDecoder(CONFIG, 3)
    x = torch.randn(3, 5, 16, 16) if kind == "encoder" else torch.randn(3, 6, 4, 4)
    exact = output_and_grads(module, x, plain=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = output_and_grads(module, x, plain=True)
        actual = output_and_grads(module, x, plain=False)
    assert actual[0].dtype == plain[0].dtype == torch.bfloat16
    for a, p, e in zip(actual, plain, exact, strict=True):
        error, plain_error = ((t.float() - e).abs().max().item() for t in (a, p))
        assert error <= 2 * plain_error + 1e-3 * e.abs().max().item(), (error, plain_error)


def test_group_norm_backward_gives_only_the_wanted_gradients_for_any_grad_layout() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(8), torch.randn(8)
    _, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, 3, 8, 25, 2, 1e-5)
    grad = torch.randn(3, 8, 5, 5)  # contiguous, unlike the map
    expected = torch.ops.aten.native_group_norm_backward(
        grad, x.contiguous(), mean, rstd, weight, 3, 8, 25, 2, [True, True, True]
    )
    backward = recomputed_conv.group_norm_backward_channels_last
    full = backward(grad, x, mean, rstd, weight, 2, (True, True, True))
    for a, e in zip(full, expected, strict=True):
        assert a is not None
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
    assert full[0] is not None and full[0].is_contiguous(memory_format=torch.channels_last)
    only_x = backward(grad, x, mean, rstd, weight, 2, (True, False, False))
    assert only_x[1] is None and only_x[2] is None
    torch.testing.assert_close(only_x[0], expected[0], rtol=1e-5, atol=1e-5)
    only_params = backward(grad, x, mean, rstd, weight, 2, (False, True, True))
    assert only_params[0] is None
    torch.testing.assert_close(only_params[1], expected[1], rtol=1e-5, atol=1e-5)
