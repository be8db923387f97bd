"""Dispatch-level instruments for the op-count and host-sync tests: what each training step or
imagined step asks of the device, counted below autograd (forward and backward alike)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from iris_core.config import IrisConfig
from iris_core.data.structures import Batch
from iris_core.models.agent import Agent

aten = torch.ops.aten

# Ops that read a value back to the host or whose output shape depends on values.
SYNC_OPS = {
    aten._local_scalar_dense.default,
    aten.item.default,
    aten.is_nonzero.default,
    aten.equal.default,
    aten.allclose.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten.unique_consecutive.default,
    aten._unique2.default,
    aten.unique_dim.default,
}


class OpCounter(TorchDispatchMode):
    """Counts every non-view op (``detach`` and aliases included in views) and records the
    ops that would make the host wait for the device."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[Any] = Counter()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in SYNC_OPS:
            self.syncs.append(str(func))
        if func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default):
            indices = args[1]
            if any(i is not None and i.dtype == torch.bool for i in indices):
                self.syncs.append(f"{func} with a boolean mask")
        if func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self.syncs.append(f"{func} without output_size")
        if not func.is_view and func is not aten.detach.default:
            self.ops[func] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def paper_batch(config: IrisConfig, name: str, device: torch.device | str) -> Batch:
    """A batch of the preset's size for one component (zeros: op counts do not depend on values)."""
    component = getattr(config.training, name)
    b, t = component.batch_num_samples, component.sequence_length
    size = config.tokenizer.image_size
    return Batch(
        obs=torch.zeros(b, t, 3, size, size, dtype=torch.uint8, device=device),
        act=torch.zeros(b, t, dtype=torch.long, device=device),
        rew=torch.zeros(b, t, device=device),
        end=torch.zeros(b, t, dtype=torch.long, device=device),
        mask_padding=torch.ones(b, t, dtype=torch.bool, device=device),
        segment_ids=[],
    )


def dependencies(agent: Agent, name: str) -> dict[str, nn.Module]:
    deps: dict[str, nn.Module] = {}
    if name != "tokenizer":
        deps["tokenizer"] = agent.tokenizer.eval()
    if name == "actor_critic":
        deps["world_model"] = agent.world_model.eval()
    return deps


def training_step(agent: Agent, name: str, batch: Batch, optimizer: torch.optim.Optimizer) -> Tensor:
    """One optimizer step as the training loop takes it: loss, backward, clipping, update."""
    component = getattr(agent, name).train()
    losses, _ = component.compute_loss(batch, **dependencies(agent, name))
    loss = torch.stack([term.float() for term in losses.values()]).sum()
    loss.backward()
    params = [p for p in component.parameters() if p.grad is not None]
    # clip_grad_norm_ as torch runs it on CUDA (its foreach path, which it refuses on meta tensors).
    norms = torch._foreach_norm([p.grad for p in params], 2.0)  # type: ignore[misc]
    total_norm = torch.linalg.vector_norm(torch.stack(norms), 2.0)
    coef = torch.clamp(10.0 / (total_norm + 1e-6), max=1.0)
    torch._foreach_mul_([p.grad for p in params], coef)  # type: ignore[misc]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()
