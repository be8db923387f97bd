"""The optimisation layer: how a built agent runs on its device, applied from outside the models.

The paper modules (``convnet``, ``tokenizer``, ``world_model``, ``actor_critic``) are plain torch.
:func:`apply_runtime` takes a built :class:`Agent` and makes it fast on its device without changing
what it computes (up to floating-point rounding); :func:`optimizer_options` gives the matching
optimizer flags. What it does is chosen by ``RuntimeConfig`` (``None`` = the device default):

- ``channels_last``: CNN weights in NHWC, the layout cuDNN's and oneDNN's convolutions run
  natively. On CPU it comes with :class:`AccurateGroupNorm`: torch's channels-last CPU
  GroupNorm computes the variance as E[x²] − E[x]² in the map's dtype, which loses precision when
  a group's mean is large against its spread (zero padding frames, flat backgrounds), so the
  norms take their statistics in two passes, or run in the contiguous layout under autograd.
- ``cpu_kernels`` (CPU only): :class:`SubPixelUpsample` computes nearest ×2 upsampling then a
  3×3 convolution in fp32 as one 2×2 convolution of the small map (16 instead of 36
  multiply-adds per input pixel); and the CNNs run on batch chunks (:func:`chunk_batches`).
- ``checkpoint_cnns``: activation checkpointing (``torch.utils.checkpoint``), compute traded for
  memory. Every GroupNorm → SiLU → convolution unit (those of the residual blocks and each CNN's
  head) and upsample keeps only its input: the backward pass re-runs the cheap GroupNorm, SiLU
  and interpolation, never a convolution, and a residual block keeps two maps instead of six.
  With ``cpu_kernels``, every CNN but the tokenizer's encoder and decoder is checkpointed by
  batch chunk instead, each chunk re-run whole in the backward pass. Worth it at the paper's
  batches; at small ones (the quickstart presets turn it off) it only costs time.
- ``compile``: ``torch.compile`` of each component's ``compute_loss``; on CUDA the imagination
  rollout is compiled with ``mode="reduce-overhead"`` (CUDA graphs).
- ``tf32``, ``fused_adam`` (CUDA): TF32 matmuls/convolutions as the reference code trains, and
  Adam's update as one fused kernel.

Module swaps change a module's class to a subclass with the same parameters and buffers, so
state dicts, optimizers and checkpoints see the same agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from iris_core.config import RuntimeConfig
from iris_core.models.agent import Agent
from iris_core.models.convnet import FrameDecoder, FrameEncoder, ResidualBlock, Upsample


@dataclass(frozen=True)
class RuntimeSettings:
    """``RuntimeConfig`` with every default resolved for one device."""

    device: torch.device
    channels_last: bool
    checkpoint_cnns: bool
    cpu_kernels: bool
    compile: bool
    tf32: bool
    fused_adam: bool


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → cuda when available, else cpu; anything else as torch reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_runtime(config: RuntimeConfig, device: str | torch.device) -> RuntimeSettings:
    """The settings ``config`` asks for on ``device``, its ``None`` fields set to the device's defaults."""
    device = resolve_device(device)
    cuda, cpu = device.type == "cuda", device.type == "cpu"
    if config.cpu_kernels and not cpu:
        raise ValueError(f"runtime.cpu_kernels is for the CPU, the device is {device}")

    def pick(value: bool | None, default: bool) -> bool:
        return default if value is None else value

    return RuntimeSettings(
        device=device,
        channels_last=pick(config.channels_last, cuda or cpu),
        checkpoint_cnns=pick(config.checkpoint_cnns, cpu),
        cpu_kernels=pick(config.cpu_kernels, cpu),
        compile=pick(config.compile, False),
        tf32=pick(config.tf32, cuda),
        fused_adam=pick(config.fused_adam, cuda),
    )


def apply_runtime(agent: Agent, config: RuntimeConfig, device: str | torch.device) -> Agent:
    """Move ``agent`` to ``device`` and apply the optimisations of ``config`` there; returns it.

    Call once, after building the agent and before creating its optimizers. Values and
    gradients stay those of the plain modules up to rounding; parameter names and objects are
    unchanged. TF32 is a process-wide switch.
    """
    settings = resolve_runtime(config, device)
    agent.to(settings.device)
    if settings.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if settings.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the shapes of a run are fixed: pick the fastest kernels
    # With checkpointing on CPU, the tokenizer's encoder and decoder keep their convolution outputs
    # for the backward pass; every other CNN (the tokenizer's context CNN, the world model's I-token
    # CNN, the policy CNN) is re-run chunk by chunk: the context CNN's activations are a third of
    # the tokenizer's, for a sixth of its convolutions.
    keeping = (agent.tokenizer.encoder, agent.tokenizer.decoder)
    for cnn in [m for m in agent.modules() if isinstance(m, FrameEncoder | FrameDecoder)]:
        optimise_cnn(cnn, settings, recompute_chunks=not any(cnn is kept for kept in keeping))
    if settings.compile:
        compile_agent(agent, settings.device)
    return agent


def optimise_cnn(cnn: nn.Module, settings: RuntimeSettings, recompute_chunks: bool = False) -> None:
    """The CNN part of :func:`apply_runtime`, for one ``FrameEncoder`` or ``FrameDecoder``.

    ``recompute_chunks``: with ``checkpoint_cnns`` and ``cpu_kernels``, the CNN is checkpointed
    by batch chunk (each chunk re-run whole in the backward pass) instead of by unit.
    """
    rerun_chunks = settings.checkpoint_cnns and settings.cpu_kernels and recompute_chunks
    if settings.cpu_kernels:
        swap_sub_pixel_upsampling(cnn)
    if settings.checkpoint_cnns and not rerun_chunks:
        checkpoint_cnn(cnn)
    if settings.channels_last:
        if settings.device.type == "cpu":
            swap_group_norms(cnn)  # torch's channels-last CPU GroupNorm is not accurate
        cnn.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if settings.cpu_kernels:
        chunk_batches(cnn, recompute=rerun_chunks)


def chunk_batches(cnn: nn.Module, frames_per_chunk: int = 32, recompute: bool = False) -> None:
    """Run ``cnn`` on ``frames_per_chunk`` frames at a time (CPU); same values and gradients.

    Every map then exists for one chunk at a time: small enough for the allocator to recycle
    (a fresh large map is page-faulted and zeroed on every use) and, without autograd (the
    frozen networks, imagination), a bounded memory. With ``recompute``, under autograd each
    chunk keeps only its input and is re-run in the backward pass (``torch.utils.checkpoint``).
    """
    swapped = _optimised(cnn)
    swapped.frames_per_chunk = frames_per_chunk
    swapped.recompute = recompute


def optimizer_options(config: RuntimeConfig, device: str | torch.device) -> dict[str, Any]:
    """Keyword arguments for ``torch.optim.Adam``/``AdamW`` on ``device``: ``{"fused": True}`` with
    fused Adam (CUDA), else ``{}`` (torch's default multi-tensor update)."""
    return {"fused": True} if resolve_runtime(config, device).fused_adam else {}


# --- CPU kernels ------------------------------------------------------------------------------


class AccurateGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` on channels-last CPU maps, as accurate as torch's contiguous kernel.

    torch's CPU kernel for channels-last maps computes each group's variance as E[x²] − E[x]² in
    the map's dtype: when the mean is large against the spread (a flat background, a zero
    padding frame after a bias) most significant digits cancel. Here, without autograd (the
    frozen networks, imagination), the statistics are taken in the map's own layout in two
    passes: the group means, then the mean and mean square of the centred map (its mean removes
    the first pass's rounding). With autograd the map goes through the contiguous kernel and
    back, so the backward pass is torch's own. Contiguous maps take torch's kernel directly.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.is_contiguous():
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        if torch.is_grad_enabled() or not self.affine or x.dtype not in (torch.float32, torch.float64):
            out = F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
            return out.contiguous(memory_format=torch.channels_last)
        n, c = x.shape[:2]
        groups = self.num_groups

        def group_mean(per_channel: Tensor) -> Tensor:
            """``(N, C)`` → the mean over each channel's group, ``(N, C, 1, 1)``."""
            means = per_channel.view(n, groups, c // groups).mean(dim=-1, keepdim=True)
            return means.expand(n, groups, c // groups).reshape(n, c, 1, 1)

        centred = x - group_mean(x.mean(dim=(2, 3)))  # channels-last, like x
        residual = group_mean(centred.mean(dim=(2, 3)))
        var = group_mean(centred.square().mean(dim=(2, 3))) - residual.square()
        scale = (var + self.eps).rsqrt() * self.weight.to(x.dtype)[:, None, None]
        shift = self.bias.to(x.dtype)[:, None, None] - residual * scale
        return torch.addcmul(shift, centred, scale, out=centred)


# Sub-pixel form of a 3×3 convolution after nearest ×2 upsampling. Output pixel (2i + a, 2j + b)
# reads upsampled rows 2i + a − 1 .. 2i + a + 1, i.e. input rows (i − 1, i) when a = 0 and (i, i + 1)
# when a = 1; kernel rows landing on the same input row are summed. _PHASE_TAPS[a][r][k] is 1 when
# kernel row k lands on input row r of phase a (columns alike). Zero padding of the upsampled map
# is zero padding of the input, so borders are exact too.
_PHASE_TAPS = (((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)))


class SubPixelUpsample(Upsample):
    """:class:`Upsample` as four 2×2 convolutions of the small map, one per output phase (fp32).

    The four phases run as one 2×2 convolution with 4× the output channels over the 1-padded
    input; then they are interleaved into the ×2 map. Same function, 16 instead of 36
    multiply-adds per input pixel. Under bf16/fp16 the summed kernels would be rounded once more,
    so there the plain path runs.
    """

    def forward(self, x: Tensor) -> Tensor:
        device_type = x.device.type
        reduced = x.dtype in (torch.bfloat16, torch.float16) or (
            torch.is_autocast_enabled(device_type)
            and torch.get_autocast_dtype(device_type) in (torch.bfloat16, torch.float16)
        )
        if reduced:
            return super().forward(x)
        conv = self.conv
        taps = torch.tensor(_PHASE_TAPS, dtype=conv.weight.dtype, device=conv.weight.device)
        # (a, b, out, in, 2, 2): kernel of phase (a, b), then phases stacked as output channels.
        weight = torch.einsum("apk,bql,oikl->aboipq", taps, taps, conv.weight).flatten(0, 2)
        bias = None if conv.bias is None else conv.bias.repeat(4)
        n, _, h, w = x.shape
        phases = F.conv2d(F.pad(x, (1, 1, 1, 1)), weight, bias)  # (N, 4·out, H + 1, W + 1)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # Interleave in NHWC order, so that the output stays channels-last.
            # (N, H + 1, W + 1, a, b, out)
            nhwc = phases.permute(0, 2, 3, 1).reshape(n, h + 1, w + 1, 2, 2, conv.out_channels)
            rows = [torch.stack([nhwc[:, a : a + h, b : b + w, a, b] for b in (0, 1)], dim=3) for a in (0, 1)]
            out = torch.stack(rows, dim=2)  # (N, H, a, W, b, out)
            return out.reshape(n, 2 * h, 2 * w, conv.out_channels).permute(0, 3, 1, 2)
        nchw = phases.reshape(n, 2, 2, conv.out_channels, h + 1, w + 1)  # (N, a, b, out, H + 1, W + 1)
        rows = [torch.stack([nchw[:, a, b, :, a : a + h, b : b + w] for b in (0, 1)], dim=-1) for a in (0, 1)]
        out = torch.stack(rows, dim=-3)  # (N, out, H, a, W, b)
        return out.reshape(n, conv.out_channels, 2 * h, 2 * w)


def swap_group_norms(cnn: nn.Module) -> None:
    """Use :class:`AccurateGroupNorm` for every GroupNorm inside ``cnn`` (CPU, channels-last)."""
    for module in cnn.modules():
        if type(module) is nn.GroupNorm:
            module.__class__ = AccurateGroupNorm


def swap_sub_pixel_upsampling(cnn: nn.Module) -> None:
    """Use :class:`SubPixelUpsample` for every upsample inside ``cnn`` (CPU)."""
    for module in cnn.modules():
        swapped = _SUB_PIXEL.get(type(module))
        if swapped is not None:
            module.__class__ = swapped


# --- activation checkpointing -------------------------------------------------------------------

# A checkpointed unit (GroupNorm → SiLU → convolution, or an upsample) keeps only its input for the
# backward pass, where it is re-run up to its convolution and no further: torch's non-reentrant
# checkpoint stops re-running once every tensor the backward needs is back (its early stop), and
# a convolution's inputs are saved before it computes. So the backward re-runs a few element-wise
# passes, never a convolution, and a residual block keeps two maps (its input and its first
# convolution's output) where plain autograd keeps six.


def _without_cast_cache(function: Any) -> Any:
    """``function`` with autocast's cache of cast weights off inside it (the same values).

    A module run more than once in a forward pass (batch chunks) takes its cast weights from that
    cache after the first run, while its recomputation in the backward pass casts them again: the
    checkpoint then meets casts it never recorded and fails. Without the cache both passes cast
    alike.
    """

    def run(x: Tensor) -> Any:
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type) and torch.is_autocast_cache_enabled():
            dtype = torch.get_autocast_dtype(device_type)
            with torch.autocast(device_type, dtype=dtype, cache_enabled=False):
                return function(x)
        return function(x)

    return run


def _checkpoint(function: Any, x: Tensor) -> Tensor:
    out = checkpoint(_without_cast_cache(function), x, use_reentrant=False, preserve_rng_state=False)
    assert isinstance(out, Tensor)
    return out


class CheckpointedResidualBlock(ResidualBlock):
    """``skip(x) + f(x)`` with ``f`` run as two checkpointed units (GN → SiLU → conv, twice)."""

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return super().forward(x)
        out: Tensor = self.skip_projection(x) + _checkpoint(self.f[3:], _checkpoint(self.f[:3], x))
        return out


class _CheckpointedUpsample(nn.Module):
    """Mixin: the upsample as one checkpointed unit when autograd records."""

    def forward(self, x: Tensor) -> Tensor:
        plain = super().forward
        if not torch.is_grad_enabled():
            out: Tensor = plain(x)
            return out
        return _checkpoint(plain, x)


class CheckpointedUpsample(_CheckpointedUpsample, Upsample):
    pass


class CheckpointedSubPixelUpsample(_CheckpointedUpsample, SubPixelUpsample):
    pass


_CHECKPOINTED: dict[type[nn.Module], type[nn.Module]] = {
    ResidualBlock: CheckpointedResidualBlock,
    Upsample: CheckpointedUpsample,
    SubPixelUpsample: CheckpointedSubPixelUpsample,
}


_SUB_PIXEL: dict[type[nn.Module], type[nn.Module]] = {
    Upsample: SubPixelUpsample,
    CheckpointedUpsample: CheckpointedSubPixelUpsample,
}


def checkpoint_cnn(cnn: nn.Module) -> None:
    """Activation checkpointing of every residual block, upsample and head (GN → SiLU → conv at
    the end of a ``FrameEncoder`` or ``FrameDecoder``) inside ``cnn``."""
    for module in list(cnn.modules()):
        swapped = _CHECKPOINTED.get(type(module))
        if swapped is not None:
            module.__class__ = swapped
        elif isinstance(module, FrameEncoder | FrameDecoder):
            _optimised(module).checkpoint_head = True


# --- batch chunks and the CNN's head -------------------------------------------------------------


class _OptimisedCnn(nn.Module):
    """Mixin for a ``FrameEncoder`` or ``FrameDecoder``: its forward over batch chunks (see
    :func:`chunk_batches`) and, with ``checkpoint_head``, its final GN → SiLU → conv as one
    checkpointed unit (see :func:`checkpoint_cnn`)."""

    layers: nn.Sequential
    frames_per_chunk: int | None = None
    recompute: bool = False
    checkpoint_head: bool = False

    def forward(self, x: Tensor) -> Tensor:
        n = self.frames_per_chunk
        if n is None or x.size(0) <= n:
            return self._forward_chunk(x)
        chunks = [x[i : i + n] for i in range(0, x.size(0), n)]
        if self.recompute and torch.is_grad_enabled():
            return torch.cat([_checkpoint(self._forward_chunk, chunk) for chunk in chunks])
        return torch.cat([self._forward_chunk(chunk) for chunk in chunks])

    def _forward_chunk(self, x: Tensor) -> Tensor:
        if self.checkpoint_head and torch.is_grad_enabled():
            return _checkpoint(self.layers[-3:], self.layers[:-3](x))
        out: Tensor = super().forward(x)
        return out


class OptimisedFrameEncoder(_OptimisedCnn, FrameEncoder):
    pass


class OptimisedFrameDecoder(_OptimisedCnn, FrameDecoder):
    pass


_OPTIMISED: dict[type[nn.Module], type[nn.Module]] = {
    FrameEncoder: OptimisedFrameEncoder,
    FrameDecoder: OptimisedFrameDecoder,
}


def _optimised(cnn: nn.Module) -> _OptimisedCnn:
    """``cnn`` (a ``FrameEncoder`` or ``FrameDecoder``) as its :class:`_OptimisedCnn` subclass."""
    if not isinstance(cnn, _OptimisedCnn):
        assert isinstance(cnn, FrameEncoder | FrameDecoder), type(cnn)
        norm, act, conv = list(cnn.layers)[-3:]  # the head that checkpoint_head wraps
        assert isinstance(norm, nn.GroupNorm) and isinstance(act, nn.SiLU) and isinstance(conv, nn.Conv2d)
        swapped: nn.Module = cnn
        swapped.__class__ = _OPTIMISED[type(cnn)]
        cnn = swapped
    assert isinstance(cnn, _OptimisedCnn), type(cnn)
    return cnn


# --- compilation --------------------------------------------------------------------------------


def compile_agent(agent: Agent, device: torch.device, backend: str = "inductor") -> None:
    """``torch.compile`` of the tokenizer's and world model's ``compute_loss`` and of imagination
    (with CUDA graphs on CUDA: ``mode="reduce-overhead"``).

    The actor-critic's own ``compute_loss`` stays eager around its compiled rollout (a compiled
    caller would inline the rollout and lose its CUDA graphs). The compiled functions replace
    attributes of the instances; parameters are untouched.
    """
    for component in (agent.tokenizer, agent.world_model):
        component.compute_loss = torch.compile(component.compute_loss, backend=backend)  # type: ignore[method-assign]
    mode = "reduce-overhead" if device.type == "cuda" else None
    agent.actor_critic.imagine = torch.compile(agent.actor_critic.imagine, backend=backend, mode=mode)
