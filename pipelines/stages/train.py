"""The ``tokenizer@i``, ``world_model@i`` and ``actor_critic@i`` stages: the optimizer steps of
the iteration's epochs for one component (docs/method.md §5), over every episode
collected so far.

The steps run in chunks of ``loop.log_every_steps``: after each chunk the running means are
logged (one row of the learning curve), the loss is checked for NaN/inf, and, every
``loop.checkpoint_every_seconds``, the whole training state is saved under ``.iris/partial/`` so a
killed stage continues from there instead of starting over. Chunking changes no number: a chunk
boundary is only where the host reads the device.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from iris_core.data.prefetch import Prefetcher
from iris_core.data.sampler import load_batch
from iris_core.data.structures import Batch
from iris_core.models.runtime import optimizer_options
from iris_core.training.optim import make_optimizer
from iris_core.training.train_component import MetricsSink, train_component
from pipelines.atomic import atomic_torch_save
from pipelines.progress import Progress
from pipelines.stages.common import (
    StageContext,
    component_sampler,
    digest_files,
    load_sampler_state,
    read_checkpoint,
    sampler_state,
    write_checkpoint,
    write_json,
    write_tsv,
)
from pipelines.stages.faults import kill_point
from pipelines.stages.result import StageResult
from pipelines.storage import ZarrEpisodeDataset

# What each component's loss needs besides its batch (frozen, in eval mode).
DEPENDENCIES = {"tokenizer": (), "world_model": ("tokenizer",), "actor_critic": ("tokenizer", "world_model")}
PARTIAL_FORMAT = 1


def _torch_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_torch_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_train(
    ctx: StageContext,
    component: str,
    iteration: int,
    prev: int,
    sink: MetricsSink | None = None,
    on_progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> StageResult:
    ws, config, loop = ctx.workspace, ctx.config, ctx.loop
    stage = f"{component}@{iteration}"
    ctx.seed(component, iteration)
    previous = read_checkpoint(ws.checkpoint(component, prev))
    num_actions = int(previous["num_actions"])
    agent = ctx.build_agent(num_actions)
    module: nn.Module = getattr(agent, component)
    module.load_state_dict(previous["weights"])
    inputs = [ws.checkpoint(component, prev), ws.manifest(iteration)]
    deps: dict[str, object] = {}
    for name in DEPENDENCIES[component]:
        checkpoint = read_checkpoint(ws.checkpoint(name, iteration))
        dependency = getattr(agent, name)
        dependency.load_state_dict(checkpoint["weights"])
        dependency.eval()
        deps[name] = dependency
        inputs.append(ws.checkpoint(name, iteration))

    training = config.training
    component_config = getattr(training, component)
    options = optimizer_options(config.runtime, ctx.device)
    optimizer = make_optimizer(module, training, component_config, options)
    if previous["optimizer"] is not None:
        optimizer.load_state_dict(previous["optimizer"])
    sampler = component_sampler(config, component, seed=0)
    load_sampler_state(sampler, previous["sampler"])
    steps = int(previous["steps"])
    plan = ctx.schedule.training_steps(component, iteration)
    # Where the stage is: index in ``plan``, steps done in that epoch, curve rows so far.
    position = {"epoch_index": 0, "done_in_epoch": 0}
    rows: list[dict[str, float]] = []

    # A mid-stage checkpoint of the same inputs lets a restarted stage continue where it stopped.
    partial_dir = ws.partial(stage)
    key = digest_files(inputs, {"config": repr(config), "loop": repr(loop), "plan": plan})
    partial_path = partial_dir / f"{key}.pt"
    if partial_dir.exists():
        for stale in partial_dir.iterdir():
            if stale != partial_path:
                stale.unlink()
    if partial_path.is_file():
        saved = torch.load(partial_path, map_location="cpu", weights_only=True)
        module.load_state_dict(saved["weights"])
        optimizer.load_state_dict(saved["optimizer"])
        load_sampler_state(sampler, saved["sampler"])
        steps = int(saved["steps"])
        position = dict(saved["position"])
        rows = list(saved["rows"])
        print(f"{stage}: continuing from step {steps} (mid-stage checkpoint)", file=sys.stderr)
    else:
        saved = None
    dataset = ZarrEpisodeDataset.from_manifest(str(ws.manifest(iteration)))
    if dataset.num_episodes == 0 and plan:
        raise RuntimeError(f"{stage}: no episodes to train on ({ws.manifest(iteration)} lists no data)")
    if saved is not None:
        _set_torch_rng_state(saved["torch_rng"])

    def next_batch() -> Batch:
        return load_batch(dataset, sampler.sample(dataset.episode_lengths()))

    prefetcher: Prefetcher[dict[str, Any]] | None = None

    def consumed_sampler_state() -> dict[str, Any]:
        """The sampler as it was after the last batch trained on (the prefetcher samples ahead)."""
        if prefetcher is not None and prefetcher.snapshot is not None:
            return prefetcher.snapshot
        return sampler_state(sampler)

    def save_partial() -> None:
        atomic_torch_save(
            {
                "format": PARTIAL_FORMAT,
                "weights": module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "sampler": consumed_sampler_state(),
                "steps": steps,
                "position": position,
                "rows": rows,
                "torch_rng": _torch_rng_state(),
            },
            partial_path,
        )

    started = time.perf_counter()
    last_save = time.perf_counter()
    total = sum(n for _, n in plan)
    done = sum(n for _, n in plan[: position["epoch_index"]]) + position["done_in_epoch"]
    bar = Progress(stage, total)
    bar.update(done)
    for index in range(position["epoch_index"], len(plan)):
        epoch, num_steps = plan[index]
        sampler.update_counts = epoch > 1  # counts stay untouched in epoch 1 (docs/method.md §3)
        # The epoch's remaining batches are sampled and collated in a background thread while the
        # steps run (the same batches in the same order); never one more, so that the sampler
        # ends the epoch exactly where direct sampling would.
        budget = [(num_steps - position["done_in_epoch"]) * component_config.grad_acc_steps]

        def epoch_batch(budget: list[int] = budget) -> Batch:
            if budget[0] == 0:
                raise RuntimeError("the epoch's batches are all sampled")
            budget[0] -= 1
            return next_batch()

        prefetcher = Prefetcher(epoch_batch, device=ctx.device, snapshot=lambda: sampler_state(sampler))
        try:
            while position["done_in_epoch"] < num_steps:
                chunk = min(loop.log_every_steps, num_steps - position["done_in_epoch"])
                means = train_component(
                    module,
                    optimizer,
                    component_config,
                    prefetcher,
                    chunk,
                    name=component,
                    deps=deps,
                    first_step=steps,
                )
                steps += chunk
                done += chunk
                position["done_in_epoch"] += chunk
                row = {"step": float(steps), "epoch": float(epoch), **means}
                rows.append(row)
                if sink is not None:
                    sink.log({f"{component}/train/{k}": v for k, v in means.items()}, steps)
                bar.update(done, {k: v for k, v in means.items() if k == "loss_total"})
                if on_progress is not None:
                    on_progress(done, total, means)
                if time.perf_counter() - last_save >= loop.checkpoint_every_seconds and done < total:
                    save_partial()
                    last_save = time.perf_counter()
                kill_point(stage, f"step={steps}")
        finally:
            prefetcher.close()
        prefetcher = None
        position = {"epoch_index": index + 1, "done_in_epoch": 0}
    bar.close()
    module.eval()

    write_checkpoint(
        ws.checkpoint(component, iteration),
        component=component,
        iteration=iteration,
        num_actions=num_actions,
        weights=module.state_dict(),
        optimizer=optimizer.state_dict() if (plan or previous["optimizer"] is not None) else None,
        sampler=sampler_state(sampler),
        steps=steps,
        epochs_done=ctx.schedule.epochs(iteration).stop - 1,
    )
    metrics = _iteration_means(component, rows)
    metrics[f"{component}/steps"] = float(steps)
    metrics[f"{component}/seconds"] = time.perf_counter() - started
    write_json(ws.metrics(component, iteration), metrics)
    write_tsv(ws.plot(component, iteration), rows or [{"step": float(steps)}])
    if partial_dir.exists():
        shutil.rmtree(partial_dir)
    return StageResult(metrics=metrics)


def _iteration_means(component: str, rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each curve column over the iteration's steps, under ``<component>/iteration/<key>``
    (the per-step values are ``<component>/train/<key>`` on the optimizer-step axis)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in rows:
        for key, value in row.items():
            if key in ("step", "epoch"):
                continue
            sums[key] = sums.get(key, 0.0) + value
            counts[key] = counts.get(key, 0) + 1
    return {f"{component}/iteration/{key}": total / counts[key] for key, total in sums.items()}
