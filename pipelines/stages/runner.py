"""Running one stage: load the workspace's experiment, open its tracking run, call the stage
function, record the result. Every way of running the pipeline goes through :func:`run_stage`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from iris_core.training.schedule import COMPONENTS
from pipelines.config import Experiment, LoopConfig, load_experiment
from pipelines.preflight import check_config
from pipelines.stages.common import StageContext, StageError, resolve_device
from pipelines.stages.result import StageResult
from pipelines.workspace import Workspace

PER_ITERATION = ("collect", *COMPONENTS)
PER_EVALUATION = ("evaluate", "promote")


@dataclass(frozen=True)
class StageSpec:
    kind: str  # init, collect, tokenizer, world_model, actor_critic, evaluate, promote
    iteration: int  # 0 for init

    @property
    def name(self) -> str:
        return self.kind if self.kind == "init" else f"{self.kind}@{self.iteration}"


def parse_stage(name: str) -> StageSpec:
    kind, _, iteration = name.partition("@")
    if kind == "init" and not iteration:
        return StageSpec("init", 0)
    if kind not in (*PER_ITERATION, *PER_EVALUATION) or not iteration.isdigit():
        raise StageError(f"unknown stage {name!r}: expected init or <stage>@<iteration>")
    return StageSpec(kind, int(iteration))


def stage_order(loop: LoopConfig) -> list[StageSpec]:
    """Every stage of the campaign in the order the paper's loop runs them."""
    order = [StageSpec("init", 0)]
    for key in sorted(loop.iterations, key=int):
        i = int(key)
        order += [StageSpec(kind, i) for kind in PER_ITERATION]
        if key in loop.evaluations:
            order += [StageSpec(kind, i) for kind in PER_EVALUATION]
    return order


class Tracker(Protocol):
    """The tracking run of one stage execution (MLflow in :mod:`pipelines.stages.tracking`)."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def finish(self, result: StageResult, step: int) -> None: ...


TrackerFactory = Callable[[StageContext, StageSpec], contextlib.AbstractContextManager[Tracker | None]]


@contextlib.contextmanager
def no_tracking(ctx: StageContext, spec: StageSpec) -> Iterator[Tracker | None]:
    yield None


def _previous(loop: LoopConfig, spec: StageSpec) -> int:
    table = loop.evaluations if spec.kind in PER_EVALUATION else loop.iterations
    entry = table.get(str(spec.iteration))
    if entry is None:
        where = "loop.evaluations" if spec.kind in PER_EVALUATION else "loop.iterations"
        raise StageError(f"stage {spec.name}: iteration {spec.iteration} is not in {where} of params.yaml")
    return int(entry["prev"])


def run_stage(
    root: Path,
    spec: StageSpec,
    *,
    experiment: Experiment | None = None,
    tracking: TrackerFactory | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> StageResult:
    """Run one stage in ``root`` (a workspace) and return its result."""
    workspace = Workspace(root)
    experiment = experiment or load_experiment(params_file=workspace.params)
    # The device and the envs, before any work: a missing GPU or an unknown game fails in one line.
    check_config(experiment.config)
    prev = 0 if spec.kind == "init" else _previous(experiment.loop, spec)
    ctx = StageContext(workspace, experiment, resolve_device(experiment.config.common.device))
    started = time.perf_counter()
    with (tracking or default_tracking())(ctx, spec) as tracker:
        result = _dispatch(ctx, spec, prev, tracker, progress)
        result.metrics.setdefault(f"{spec.kind}/wall_seconds", time.perf_counter() - started)
        if tracker is not None:
            tracker.finish(result, step=ctx.schedule.epochs(spec.iteration).stop - 1 if spec.iteration else 0)
    return result


def _dispatch(
    ctx: StageContext,
    spec: StageSpec,
    prev: int,
    tracker: Tracker | None,
    progress: Callable[[int, int, dict[str, float]], None] | None,
) -> StageResult:
    if spec.kind == "init":
        from pipelines.stages.collect import run_init

        return run_init(ctx)
    if spec.kind == "collect":
        from pipelines.stages.collect import run_collect

        return run_collect(ctx, spec.iteration, prev)
    if spec.kind in COMPONENTS:
        from pipelines.stages.train import run_train

        return run_train(ctx, spec.kind, spec.iteration, prev, sink=tracker, on_progress=progress)
    if spec.kind == "evaluate":
        from pipelines.stages.evaluate import run_evaluate

        return run_evaluate(ctx, spec.iteration)
    from pipelines.stages.promote import run_promote

    result: StageResult = run_promote(ctx, spec.iteration, getattr(tracker, "run_id", None))
    return result


def default_tracking() -> TrackerFactory:
    """MLflow tracking when the tracking package is available, else none."""
    try:
        from pipelines.stages.tracking import mlflow_tracking
    except ImportError:
        return no_tracking
    factory: TrackerFactory = mlflow_tracking
    return factory


def run_campaign(root: Path, **kwargs: Any) -> list[StageResult]:
    """The in-process loop: every stage of the campaign in order, in this process (tests, debugging).

    Runs the same functions as ``dvc repro`` and the flow, without DVC's up-to-date checks."""
    experiment = load_experiment(params_file=Workspace(root).params)
    return [run_stage(root, spec, experiment=experiment, **kwargs) for spec in stage_order(experiment.loop)]
