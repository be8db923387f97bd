"""One optimisation loop for the tokenizer, the world model and the actor-critic (docs/method.md §5, §6).

Every component exposes ``compute_loss(batch, **deps) -> (losses, metrics)``: named loss terms
(summed into the objective) and named metrics, all as tensors. This loop owns everything else:
mixed precision, gradient accumulation, clipping, the optimiser step, and when to synchronise
with the device. Metrics stay on the device as running sums and become floats only when they
are reported, so a step never waits for the accelerator. Logging goes through a ``MetricsSink``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from iris_core.config import ComponentTrainingConfig
from iris_core.data.structures import Batch

LossesAndMetrics = tuple[dict[str, Tensor], dict[str, Tensor]]


class TrainableComponent(Protocol):
    """What the loop needs from a component besides its parameters: the loss recipe."""

    @property
    def compute_loss(self) -> Callable[..., LossesAndMetrics]: ...


class MetricsSink(Protocol):
    """Where reported metrics go (MLflow, a file, a list in a test); ``step`` counts optimiser steps."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...


class NonFiniteLossError(FloatingPointError):
    """The summed loss of a component became NaN or infinite."""


def enable_tf32() -> None:
    """TF32 matmuls and convolutions on GPUs that have them, as the reference trains (docs/method.md §6).

    A process-wide switch: the entry point calls it once, the loop never flips it on its own.
    """
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def _autocast(device: torch.device, enabled: bool, force_on_cpu: bool) -> Any:
    """bf16 autocast where the paper's configuration uses it (tokenizer, world model; docs/method.md §6)
    and the device has it.

    On CPU it is off unless forced (benchmarks that mirror the reference's mixed precision).
    """
    if enabled and (device.type == "cuda" or (device.type == "cpu" and force_on_cpu)):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


class _RunningMeans:
    """Per-name sums of detached tensors, averaged and turned into floats only on ``flush``."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}

    def add(self, values: Mapping[str, Tensor], weight: float = 1.0) -> None:
        for key, value in values.items():
            value = value.detach().float() * weight
            self.sums[key] = self.sums[key] + value if key in self.sums else value

    def flush(self, num_steps: int) -> dict[str, float]:
        means = {key: float(total) / num_steps for key, total in self.sums.items()}
        self.sums = {}
        return means


def train_component(
    component: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: ComponentTrainingConfig,
    next_batch: Callable[[], Batch],
    num_steps: int,
    *,
    name: str,
    deps: Mapping[str, object] | None = None,
    sink: MetricsSink | None = None,
    first_step: int = 0,
    log_every: int | None = None,
    force_bf16_on_cpu: bool = False,
) -> dict[str, float]:
    """Take ``num_steps`` optimiser steps on ``component`` and return the mean of each loss term,
    metric and ``grad_norm`` over the steps since the last report.

    Each step draws ``config.grad_acc_steps`` batches from ``next_batch`` (moved to the
    component's device), back-propagates each summed loss divided by that count, clips the
    gradient norm at ``config.max_grad_norm`` (the norm before clipping is reported) and steps.
    ``deps`` are passed to ``compute_loss`` by keyword (e.g. the frozen tokenizer).

    Metrics are synchronised and the loss checked for NaN/inf every ``log_every`` steps and at
    the end; ``sink`` receives them as ``{name}/train/{key}``, with ``step`` = ``first_step`` plus
    the number of optimiser steps taken so far.
    A non-finite loss raises :class:`NonFiniteLossError` naming the component and the first bad step.
    """
    assert num_steps >= 0, f"num_steps must be >= 0, got {num_steps}"
    assert log_every is None or log_every > 0, f"log_every must be > 0, got {log_every}"
    compute_loss = cast(TrainableComponent, component).compute_loss
    deps = dict(deps or {})
    params = [p for p in component.parameters() if p.requires_grad]
    assert params, f"{name} has no trainable parameters"
    device = params[0].device
    autocast = _autocast(device, config.bf16_autocast, force_bf16_on_cpu)

    component.train()
    optimizer.zero_grad(set_to_none=True)
    running = _RunningMeans()
    first_bad_step = torch.tensor(-1, device=device)  # -1 while every loss so far was finite
    steps_since_report = 0
    report: dict[str, float] = {}

    def synchronise(step: int) -> dict[str, float]:
        bad = int(first_bad_step)
        if bad >= 0:
            raise NonFiniteLossError(
                f"{name}: non-finite loss at step {bad} (optimizer steps counted from 0)"
            )
        means = running.flush(steps_since_report)
        if sink is not None:
            sink.log({f"{name}/train/{key}": value for key, value in means.items()}, step)
        return means

    for i in range(num_steps):
        step = first_step + i
        for _ in range(config.grad_acc_steps):
            batch = next_batch().to(device, non_blocking=device.type == "cuda")
            with autocast:
                losses, metrics = compute_loss(batch, **deps)
            assert losses, f"{name}.compute_loss returned no loss terms"
            loss = torch.stack([term.float() for term in losses.values()]).sum()
            torch.autograd.backward(loss / config.grad_acc_steps)
            # The loss terms are per micro-batch means: weight them so the report is per step.
            running.add({**losses, "loss_total": loss, **metrics}, weight=1 / config.grad_acc_steps)
            is_bad = ~torch.isfinite(loss.detach())
            first_bad_step = torch.where(is_bad & (first_bad_step < 0), step, first_bad_step)
        grad_norm = nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        running.add({"grad_norm": grad_norm})
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps_since_report += 1

        if log_every is not None and (i + 1) % log_every == 0:
            report = synchronise(step + 1)
            steps_since_report = 0
    if steps_since_report > 0:
        report = synchronise(first_step + num_steps)
    return report
