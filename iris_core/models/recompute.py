"""Per-frame networks whose activations are not kept for the backward pass.

A frame CNN maps each frame independently, so its backward pass can be split by frame: given
features computed without autograd, :func:`with_recomputed_backward` returns them as a
differentiable tensor whose backward re-runs the network a chunk of frames at a time and
back-propagates each chunk. Only one chunk's activations are ever alive, for the price of one
extra forward pass. The gradients are the same as those of a forward with autograd (summed over
chunks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from iris_core.models.recomputed_conv import keeping_activations

FrameFunction = Callable[[Tensor], Tensor]

# Frames per chunk when a frame CNN runs over many frames (burn-in, target unrolls, gradient
# recomputation): bounds the activation memory without changing any result. On CPU, small chunks
# are also faster (their activations stay in cache); an accelerator may want larger ones.
FRAMES_PER_CHUNK = 16


def with_recomputed_backward(
    fn: FrameFunction, x: Tensor, output: Tensor, params: tuple[Tensor, ...], frames_per_chunk: int
) -> Tensor:
    """``output`` (``fn(x)`` computed without autograd) with gradients for ``params``.

    ``fn`` must treat frames (the first dimension) independently; ``x`` gets no gradient.
    The backward runs under the autocast state of this call.
    """
    assert frames_per_chunk > 0, frames_per_chunk
    assert output.size(0) == x.size(0), (tuple(x.shape), tuple(output.shape))
    trainable = tuple(p for p in params if p.requires_grad)
    if not torch.is_grad_enabled() or not trainable:
        return output
    result = _RecomputedBackward.apply(fn, frames_per_chunk, x.detach(), output.detach(), *trainable)  # type: ignore[no-untyped-call]
    assert isinstance(result, Tensor)
    return result


class _RecomputedBackward(torch.autograd.Function):
    """Identity on precomputed features whose backward re-runs ``fn`` chunk by chunk."""

    @staticmethod
    def forward(
        ctx: Any, fn: FrameFunction, frames_per_chunk: int, x: Tensor, output: Tensor, *params: Tensor
    ) -> Tensor:
        device_type = x.device.type
        ctx.fn, ctx.frames_per_chunk, ctx.params = fn, frames_per_chunk, params
        ctx.autocast = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        ctx.save_for_backward(x)
        return output.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        params: tuple[Tensor, ...] = ctx.params
        enabled, dtype = ctx.autocast
        grads = [torch.zeros_like(p) for p in params]
        size = ctx.frames_per_chunk
        # One chunk's activations are small: they are kept (``keeping_activations``) rather
        # than recomputed once more inside this recomputation.
        with (
            torch.enable_grad(),
            torch.autocast(x.device.type, dtype=dtype, enabled=enabled),
            keeping_activations(),
        ):
            for start in range(0, x.size(0), size):
                chunk = slice(start, start + size)
                out = ctx.fn(x[chunk])
                chunk_grads = torch.autograd.grad(out, params, grad_output[chunk].to(out.dtype))
                torch._foreach_add_(grads, chunk_grads)
        return (None, None, None, None, *grads)
