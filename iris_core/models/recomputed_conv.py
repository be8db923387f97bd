"""A convolution of a cheap function of its input that saves the input, not the function's output.

In the CNNs of spec §3 every 3×3 convolution reads ``SiLU(GroupNorm(x))`` or an upsampled map.
Plain autograd keeps, per such convolution, the normalised map, the SiLU input and the SiLU
output (the in-place SiLU has to clone its input), each as large as ``x`` or, after a ×2
upsampling, four times larger. At 64×64 resolution and 640 transitions one map is 336 MB in
bf16, which made the tokenizer's activations ~14 GB. :func:`conv_of` saves only ``x`` and
re-runs the cheap element-wise ``prepare`` during the backward pass: the same values and the
same gradients, for a few memory-bound passes over ``x``. The convolution itself is never re-run:
its backward is called directly on the recomputed input.

Forward and backward both run on batch chunks (:func:`batch_chunks`), so temporaries stay small
enough to be recycled by the allocator, and :func:`group_norm` steers around torch's slow CPU
GroupNorm kernels for channels-last maps. Where a network already runs on a small chunk (the
backward pass of ``recompute.with_recomputed_backward``), :func:`keeping_activations` turns the
saving off.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

# ``prepare`` must return a new tensor that its own backward does not read (GN → SiLU, upsampling).
Prepare = Callable[[Tensor], Tensor]


_local = threading.local()


@contextmanager
def keeping_activations() -> Iterator[None]:
    """Within it, :func:`conv_of` is plain autograd: it keeps ``prepare``'s output instead of
    re-running ``prepare`` in the backward pass.

    For a network that already runs on a small batch chunk, inside the backward pass of
    ``recompute.with_recomputed_backward``: there the activations of one chunk cost little
    memory, and re-running ``prepare`` (and cutting the chunk again) would be pure cost.
    The values and gradients are the same either way.
    """
    previous = keeps_activations()
    _local.keep = True
    try:
        yield
    finally:
        _local.keep = previous


def keeps_activations() -> bool:
    """Whether this thread is inside :func:`keeping_activations`."""
    return bool(getattr(_local, "keep", False))


def conv_of(
    prepare: Prepare, prepare_params: tuple[Tensor, ...], conv: nn.Conv2d, x: Tensor, growth: int = 1
) -> Tensor:
    """``conv(prepare(x))``; ``prepare_params`` are the parameters ``prepare`` reads, ``growth``
    how many times more elements ``prepare``'s output has than ``x``."""
    params = (*prepare_params, conv.weight, *(() if conv.bias is None else (conv.bias,)))
    if (
        keeps_activations()
        or not torch.is_grad_enabled()
        or not (x.requires_grad or any(p.requires_grad for p in params))
    ):
        out: Tensor = conv(prepare(x))
        return out
    # Chunks are sized by the largest map of one frame: the input, prepared or output map.
    per_frame = x[0].nbytes * growth * max(1, -(-conv.out_channels // conv.in_channels))
    chunks = batch_chunks(x.size(0), per_frame)
    result = _ConvOfPrepared.apply(prepare, conv, chunks, x, *params)  # type: ignore[no-untyped-call]
    assert isinstance(result, Tensor)
    return result


def norm_act_conv(x: Tensor, norm: nn.Module, conv: nn.Module) -> Tensor:
    """``conv(SiLU(norm(x)))`` saving only ``x`` for the backward pass."""
    assert isinstance(norm, nn.GroupNorm) and isinstance(conv, nn.Conv2d), (norm, conv)

    def prepare(t: Tensor) -> Tensor:
        # Functional, not ``norm(t)``: a module call inside the backward pass would fire global
        # module hooks (e.g. FlopCounterMode's), which cannot run inside a backward pass.
        normed = group_norm(t, norm.num_groups, norm.weight, norm.bias, norm.eps)
        # In place where no graph is recorded (inference, the custom forward): one map fewer.
        return F.silu(normed, inplace=not torch.is_grad_enabled())

    return conv_of(prepare, tuple(norm.parameters()), conv, x)


class _ConvOfPrepared(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, prepare: Prepare, conv: nn.Conv2d, chunks: list[slice], x: Tensor, *params: Tensor
    ) -> Tensor:
        # Runs under the caller's autocast, so ``conv`` casts exactly as it would outside.
        out = concat_batch([conv(prepare(x[chunk])) for chunk in chunks])
        ctx.prepare, ctx.conv, ctx.conv_dtype, ctx.chunks = prepare, conv, out.dtype, chunks
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
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[3] else None
        grad_prepare_params: list[Tensor | None] = [None] * len(prepare_params)
        conv_grads: list[Tensor | None] = [None] * (len(params) - len(prepare_params))
        # One batch chunk at a time: the recomputed map and its gradients exist for one chunk only.
        for chunk in ctx.chunks:
            chunk_grad_x, chunk_param_grads, chunk_conv_grads = _backward_chunk(
                ctx, conv, x[chunk], grad_out[chunk], prepare_params
            )
            if grad_x is not None:
                assert chunk_grad_x is not None
                grad_x[chunk] = chunk_grad_x
            for i, grad in chunk_param_grads.items():
                grad_prepare_params[i] = _accumulate(grad_prepare_params[i], grad)
            for i, grad in enumerate(chunk_conv_grads):
                conv_grads[i] = _accumulate(conv_grads[i], grad)
        conv_params = (conv.weight, *(() if conv.bias is None else (conv.bias,)))
        conv_grads = [g.to(p.dtype) for g, p in zip(conv_grads, conv_params, strict=True) if g is not None]
        return (None, None, None, grad_x, *grad_prepare_params, *conv_grads)


# Maps are processed in batch chunks of at most about this many bytes. Besides bounding the
# memory of recomputed maps and layout copies, this keeps every temporary below glibc's largest
# mmap threshold (32 MiB), so that it is recycled from the heap: a fresh mmap'd map would be
# page-faulted and zeroed again on every use, which costs more than the element-wise op itself.
CHUNK_BYTES = 16 * 2**20


def batch_chunks(n: int, bytes_per_frame: int) -> list[slice]:
    """Slices of ``range(n)`` of about ``CHUNK_BYTES`` each (at least one frame, sizes balanced)."""
    num_chunks = max(1, min(n, -(-n * bytes_per_frame // CHUNK_BYTES)))
    size = -(-n // num_chunks)
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def concat_batch(parts: list[Tensor]) -> Tensor:
    """``torch.cat`` along the batch that keeps a channels-last layout."""
    if len(parts) == 1:
        return parts[0]
    channels_last = parts[0].ndim == 4 and parts[0].is_contiguous(memory_format=torch.channels_last)
    out = torch.cat(parts)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def _accumulate(total: Tensor | None, part: Tensor) -> Tensor:
    """Sums chunk gradients in fp32 (autocast gives bf16 chunk gradients)."""
    part = part.float() if part.dtype in (torch.bfloat16, torch.float16) else part
    return part if total is None else total.add_(part)


def _backward_chunk(
    ctx: Any, conv: nn.Conv2d, x: Tensor, grad_out: Tensor, prepare_params: list[Tensor]
) -> tuple[Tensor | None, dict[int, Tensor], list[Tensor]]:
    """Gradients for one batch chunk: of ``x``, of the ``prepare`` parameters (by index), of the conv."""
    enabled, autocast_dtype = ctx.autocast
    with torch.enable_grad(), torch.autocast(x.device.type, dtype=autocast_dtype, enabled=enabled):
        x = x.detach().requires_grad_(ctx.needs_input_grad[3])
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
    wanted = [i for i, p in enumerate(prepare_params) if p.requires_grad]
    inputs = ([x] if x.requires_grad else []) + [prepare_params[i] for i in wanted]
    grads = list(torch.autograd.grad(prepared, inputs, grad_prepared.to(prepared.dtype)) if inputs else ())
    grad_x = grads.pop(0) if x.requires_grad else None
    conv_grads = [grad_weight] + ([grad_bias] if conv.bias is not None else [])
    return grad_x, dict(zip(wanted, grads, strict=True)), conv_grads


def group_norm(x: Tensor, num_groups: int, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """``F.group_norm`` working around two slow paths of torch's CPU kernels on channels-last maps.

    On channels-last maps torch's GroupNorm backward is several times slower than on contiguous
    ones (bf16 and fp32 alike): in fp32 the backward is :func:`group_norm_backward_channels_last`,
    computed in the channels-last layout; in bf16 the maps are copied to the contiguous layout
    and back. torch's bf16 forward is also ~20× slower on maps of 16×16 and smaller; there the
    maps are copied too. Without autograd, fp32 maps take torch's own forward (the copies would
    cost what they save).
    """
    channels_last = x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last)
    reduced_precision = x.dtype in (torch.bfloat16, torch.float16)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad)
    if (
        x.device.type != "cpu"
        or not channels_last
        or x.is_contiguous()
        or not (reduced_precision or needs_grad)
    ):
        return F.group_norm(x, num_groups, weight, bias, eps)
    if not needs_grad:
        return _group_norm_channels_last(x, weight, bias, num_groups, eps)[0]
    result = _GroupNormChannelsLast.apply(x, weight, bias, num_groups, eps)  # type: ignore[no-untyped-call]
    assert isinstance(result, Tensor)
    return result


# Below this many pixels per map, the channels-last GroupNorm forward goes through the contiguous layout.
SMALL_MAP_PIXELS = 32 * 32


def _group_norm_channels_last(
    x: Tensor, weight: Tensor, bias: Tensor, num_groups: int, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Output (channels-last), mean and reciprocal std of each (frame, group)."""
    n, c, h, w = x.shape
    if h * w >= SMALL_MAP_PIXELS:
        out, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, h * w, num_groups, eps)
        return out, mean, rstd
    out, mean, rstd = torch.ops.aten.native_group_norm(
        x.contiguous(), weight, bias, n, c, h * w, num_groups, eps
    )
    return out.contiguous(memory_format=torch.channels_last), mean, rstd


class _GroupNormChannelsLast(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, num_groups: int, eps: float) -> Tensor:
        out, mean, rstd = _group_norm_channels_last(x, weight, bias, num_groups, eps)
        ctx.num_groups = num_groups
        ctx.save_for_backward(x, weight, mean, rstd)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, rstd = ctx.saved_tensors
        n, c, h, w = x.shape
        needs = tuple(ctx.needs_input_grad[:3])
        if x.dtype in (torch.bfloat16, torch.float16):
            # Reduced precision: torch's kernel on contiguous copies measured as fast as the fp32
            # passes of the channels-last computation in a training step (and faster on small maps).
            grad_x, grad_weight, grad_bias = torch.ops.aten.native_group_norm_backward(
                grad_out.contiguous(), x.contiguous(), mean, rstd, weight, n, c, h * w, ctx.num_groups,
                list(needs),
            )  # fmt: skip
            if grad_x is not None:
                grad_x = grad_x.contiguous(memory_format=torch.channels_last)
        else:
            grad_x, grad_weight, grad_bias = group_norm_backward_channels_last(
                grad_out, x, mean, rstd, weight, ctx.num_groups, needs
            )
        return grad_x, grad_weight, grad_bias, None, None


def group_norm_backward_channels_last(
    grad_out: Tensor,
    x: Tensor,
    mean: Tensor,
    rstd: Tensor,
    weight: Tensor,
    num_groups: int,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """GroupNorm's gradients for ``x``, ``weight``, ``bias``, computed on the maps as ``(N, H·W, C)``
    rows, in fp32 (fp64 for fp64 maps), without changing their layout. Used for fp32 maps.

    With x̂ = (x − μ)·σ⁻¹ per (frame, group), and M = H·W·C/G elements per group:
    dL/dx = σ⁻¹·(w·g − Σ(w·g)/M − x̂·Σ(w·g·x̂)/M), sums over the group. Written as
    ``a·g + b·x + c`` with per-(frame, channel) coefficients, as torch's own kernel does, it needs
    two column sums over H·W (Σg and Σg·x per channel) and one fused pass for the result: a
    fraction of the cost of torch's kernel on channels-last maps or of copying the maps to the
    contiguous layout and back (16×32×64×64 fp32: 0.85 ms against 6.1 ms).
    """
    n, c, h, w = x.shape
    hw, per_group = h * w, c // num_groups
    dtype = torch.promote_types(x.dtype, torch.float32)

    def rows(t: Tensor) -> Tensor:
        # A view for a channels-last map (a copy only for another layout), in ``dtype``.
        return t.permute(0, 2, 3, 1).reshape(n, hw, c).to(dtype)

    def per_channel(t: Tensor) -> Tensor:  # (N, G) → (N, C)
        return t.reshape(n, num_groups, 1).expand(n, num_groups, per_group).reshape(n, c)

    g, xs = rows(grad_out), rows(x)
    mean_g, rstd_g = (t.to(dtype).reshape(n, num_groups) for t in (mean, rstd))
    sum_g = g.sum(dim=1)  # (N, C)
    rstd_c = per_channel(rstd_g)  # (N, C)
    sum_g_xhat = rstd_c * ((g * xs).sum(dim=1) - per_channel(mean_g) * sum_g)  # Σ g·x̂
    grad_weight = sum_g_xhat.sum(dim=0).to(weight.dtype) if needs[1] else None
    grad_bias = sum_g.sum(dim=0).to(weight.dtype) if needs[2] else None
    if not needs[0]:
        return None, grad_weight, grad_bias
    weight_c = weight.to(dtype)
    elements = hw * per_group
    sum_dxhat = (sum_g * weight_c).reshape(n, num_groups, per_group).sum(dim=-1)  # (N, G)
    sum_dxhat_xhat = (sum_g_xhat * weight_c).reshape(n, num_groups, per_group).sum(dim=-1)
    coef_g = rstd_c * weight_c  # (N, C)
    coef_x = -rstd_g * rstd_g * sum_dxhat_xhat / elements  # (N, G)
    const = -rstd_g * sum_dxhat / elements - coef_x * mean_g
    # Allocated as (N, H·W, C) rows, so that grad_x is channels-last whatever grad_out's layout.
    grad = torch.empty((n, hw, c), dtype=dtype, device=x.device)
    torch.addcmul(per_channel(const).unsqueeze(1), g, coef_g.unsqueeze(1), out=grad)
    grad.addcmul_(xs, per_channel(coef_x).unsqueeze(1))
    grad_x = grad.to(x.dtype).reshape(n, h, w, c).permute(0, 3, 1, 2)
    return grad_x, grad_weight, grad_bias
