"""A convolution of a cheap function of its input that saves the input, not the function's output.

In the CNNs of spec §3 every 3×3 convolution reads ``SiLU(GroupNorm(x))`` or an upsampled map.
Plain autograd keeps, per such convolution, the normalised map, the SiLU input and the SiLU
output (the in-place SiLU has to clone its input), each as large as ``x`` or, after a ×2
upsampling, four times larger. At 64×64 resolution and 640 transitions one map is 336 MB in
bf16, which made the tokenizer's activations ~14 GB. :func:`conv_of` saves only ``x`` and
re-runs the cheap element-wise ``prepare`` during the backward pass: the same values and the
same gradients, for a few memory-bound passes over ``x``. The convolution itself is never re-run:
its backward is called directly on the recomputed input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

# ``prepare`` must return a new tensor that its own backward does not read (GN → SiLU, upsampling).
Prepare = Callable[[Tensor], Tensor]


def conv_of(prepare: Prepare, prepare_params: tuple[Tensor, ...], conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(prepare(x))``; ``prepare_params`` are the parameters ``prepare`` reads."""
    params = (*prepare_params, conv.weight, *(() if conv.bias is None else (conv.bias,)))
    if not torch.is_grad_enabled() or not (x.requires_grad or any(p.requires_grad for p in params)):
        out: Tensor = conv(prepare(x))
        return out
    result = _ConvOfPrepared.apply(prepare, conv, x, *params)  # type: ignore[no-untyped-call]
    assert isinstance(result, Tensor)
    return result


def norm_act_conv(x: Tensor, norm: nn.Module, conv: nn.Module) -> Tensor:
    """``conv(SiLU(norm(x)))`` saving only ``x`` for the backward pass."""
    assert isinstance(norm, nn.GroupNorm) and isinstance(conv, nn.Conv2d), (norm, conv)

    def prepare(t: Tensor) -> Tensor:
        # Functional, not ``norm(t)``: a module call inside the backward pass would fire global
        # module hooks (e.g. FlopCounterMode's), which cannot run inside a backward pass.
        normed = F.group_norm(t, norm.num_groups, norm.weight, norm.bias, norm.eps)
        # In place where no graph is recorded (inference, the custom forward): one map fewer.
        return F.silu(normed, inplace=not torch.is_grad_enabled())

    return conv_of(prepare, tuple(norm.parameters()), conv, x)


class _ConvOfPrepared(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, prepare: Prepare, conv: nn.Conv2d, x: Tensor, *params: Tensor) -> Tensor:
        # Runs under the caller's autocast, so ``conv`` casts exactly as it would outside.
        out: Tensor = conv(prepare(x))
        ctx.prepare, ctx.conv, ctx.conv_dtype = prepare, conv, out.dtype
        device_type = x.device.type
        ctx.autocast = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        ctx.num_prepare_params = len(params) - (1 if conv.bias is None else 2)
        ctx.save_for_backward(x, *params)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, *params = ctx.saved_tensors
        conv: nn.Conv2d = ctx.conv
        prepare_params = params[: ctx.num_prepare_params]
        enabled, autocast_dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(x.device.type, dtype=autocast_dtype, enabled=enabled):
            x = x.detach().requires_grad_(ctx.needs_input_grad[2])
            prepared = ctx.prepare(x)
        # The autocast forward cast the conv's input, weight and bias to ``conv_dtype``.
        dtype = ctx.conv_dtype
        grad_prepared, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_out.to(dtype),
            prepared.detach().to(dtype),
            conv.weight.to(dtype),
            None if conv.bias is None else [conv.bias.size(0)],
            conv.stride,
            conv.padding,
            conv.dilation,
            False,
            [0, 0],
            conv.groups,
            [True, True, conv.bias is not None],
        )
        if prepared.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            # Neither SiLU's nor upsampling's backward reads its own output: free the map now
            # instead of keeping it alive until the end of the recomputed graph's backward.
            prepared.detach().untyped_storage().resize_(0)
        inputs = [t for t in (x, *prepare_params) if t.requires_grad]
        grads = iter(
            torch.autograd.grad(prepared, inputs, grad_prepared.to(prepared.dtype)) if inputs else ()
        )
        grad_x = next(grads) if x.requires_grad else None
        grad_prepare_params = [next(grads) if p.requires_grad else None for p in prepare_params]
        conv_grads = [grad_weight.to(conv.weight.dtype)]
        if conv.bias is not None:
            conv_grads.append(grad_bias.to(conv.bias.dtype))
        return (None, None, grad_x, *grad_prepare_params, *conv_grads)
