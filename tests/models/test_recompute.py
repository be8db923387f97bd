"""Features recomputed chunk by chunk in the backward pass give the gradients of plain autograd."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from iris_core.config import FrameCnnConfig
from iris_core.models.convnet import FrameEncoder
from iris_core.models.recompute import with_recomputed_backward
from iris_core.models.recomputed_conv import keeps_activations


def frame_net() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    config = FrameCnnConfig(num_channels=8, mult=(1, 2), down=(1, 1), latent_dim=4, norm_groups=4)
    return FrameEncoder(config, in_channels=3), nn.LayerNorm(64)


def embed(cnn: nn.Module, ln: nn.Module, x: Tensor) -> Tensor:
    out: Tensor = ln(cnn(x).flatten(1))
    return out


@pytest.mark.parametrize("frames_per_chunk", [1, 2, 5, 16])
def test_gradients_equal_plain_autograd(frames_per_chunk: int) -> None:
    cnn, ln = frame_net()
    params = (*cnn.parameters(), *ln.parameters())
    x = torch.rand(5, 3, 16, 16)
    weights = torch.randn(5, 64)

    expected_out = embed(cnn, ln, x)
    expected = torch.autograd.grad((expected_out * weights).sum(), params)

    with torch.no_grad():
        features = embed(cnn, ln, x)
    out = with_recomputed_backward(lambda t: embed(cnn, ln, t), x, features, params, frames_per_chunk)
    assert out.requires_grad
    torch.testing.assert_close(out, expected_out)
    actual = torch.autograd.grad((out * weights).sum(), params)
    for a, e in zip(actual, expected, strict=True):
        # Chunk gradients are summed in another order: a few ulps of the largest entry.
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5 * max(1.0, e.abs().max().item()))


def test_frozen_or_no_grad_returns_the_features_unchanged() -> None:
    cnn, _ = frame_net()
    x = torch.rand(2, 3, 16, 16)
    features = torch.randn(2, 64)
    with torch.no_grad():
        assert with_recomputed_backward(lambda t: t, x, features, tuple(cnn.parameters()), 4) is features
    frozen = tuple(p.requires_grad_(False) for p in cnn.parameters())
    assert with_recomputed_backward(lambda t: t, x, features, frozen, 4) is features


def test_the_recomputation_keeps_the_activations_of_its_chunks() -> None:
    """The backward pass re-runs the network on small chunks with every activation kept (no
    second recomputation inside the first); the forward pass is not affected."""
    cnn, ln = frame_net()
    params = (*cnn.parameters(), *ln.parameters())
    x = torch.rand(5, 3, 16, 16)
    modes: list[bool] = []

    def fn(t: Tensor) -> Tensor:
        modes.append(keeps_activations())
        return embed(cnn, ln, t)

    with torch.no_grad():
        features = fn(x)
    out = with_recomputed_backward(fn, x, features, params, 2)
    assert modes == [False]
    out.sum().backward()
    assert modes == [False, True, True, True]  # chunks of 2, 2 and 1 frames
    assert not keeps_activations()
