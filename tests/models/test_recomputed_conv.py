"""The memory-saving CNN forward (inputs saved, GN/SiLU/upsampling recomputed) changes no number."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from iris_core.config import FrameCnnConfig
from iris_core.models.convnet import FrameDecoder, FrameEncoder

CONFIG = FrameCnnConfig(num_channels=8, mult=(1, 2), down=(1, 1), latent_dim=6, norm_groups=4)


def output_and_grads(module: nn.Module, x: Tensor, plain: bool) -> list[Tensor]:
    """Output and gradients of a fixed random projection of it; ``plain``: ``layers`` as a
    bare ``nn.Sequential`` (autograd saves every activation), the un-optimised oracle."""
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out = module.layers(x) if plain else module(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out.float() * weights).sum().backward()
    assert x.grad is not None
    return [out, x.grad, *(p.grad for p in module.parameters() if p.grad is not None)]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_same_output_and_gradients_as_plain_autograd_in_fp32(kind: str, channels_last: bool) -> None:
    torch.manual_seed(0)
    module: nn.Module = FrameEncoder(CONFIG, 5) if kind == "encoder" else FrameDecoder(CONFIG, 3)
    x = torch.randn(3, 5, 16, 16) if kind == "encoder" else torch.randn(3, 6, 4, 4)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    expected = output_and_grads(module, x, plain=True)
    actual = output_and_grads(module, x, plain=False)
    assert len(actual) == len(expected) == 2 + len(list(module.parameters()))
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)


def test_same_gradients_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    module = FrameDecoder(CONFIG, 3)
    x = torch.randn(3, 6, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = output_and_grads(module, x, plain=True)
        actual = output_and_grads(module, x, plain=False)
    assert actual[0].dtype == expected[0].dtype == torch.bfloat16
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=2e-2, atol=2e-2)
