"""Each stage execution as an MLflow child run of its campaign's parent run.

A *campaign* is one workspace running one experiment: its id is a digest of the workspace folder
and the resolved config without ``common.epochs`` (adding iterations continues a campaign;
changing any hyperparameter or the seed starts another).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from iris_core.config import config_to_dict
from pipelines import console
from pipelines.stages.common import StageContext
from pipelines.stages.result import StageResult
from pipelines.stages.runner import StageSpec


def experiment_tree(ctx: StageContext) -> dict[str, Any]:
    """The resolved config plus the loop settings, as logged (nested)."""
    loop = ctx.loop
    return {
        **config_to_dict(ctx.config),
        "loop": {"epochs_per_iteration": loop.epochs_per_iteration, "log_every_steps": loop.log_every_steps},
    }


def campaign_identity(ctx: StageContext) -> tuple[str, str]:
    """``(campaign id, readable name)`` of the workspace's experiment."""
    tree = experiment_tree(ctx)
    tree["common"] = {k: v for k, v in tree["common"].items() if k not in ("epochs", "device")}
    tree.pop("runtime", None)  # speed settings: the same experiment on any device
    text = json.dumps({"workspace": str(ctx.workspace.root.resolve()), "config": tree}, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    env = ctx.config.env.train.id or ctx.config.env.train.kind
    return digest, f"{env}-seed{ctx.config.common.seed}-{digest[:6]}"


def registered_model_name(ctx: StageContext) -> str:
    env = ctx.config.env.train.id or ctx.config.env.train.kind
    return f"delta-iris-{env}".replace("/", "-")


def _md5(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_tags(ctx: StageContext, spec: StageSpec) -> dict[str, str]:
    """The DVC identity of the stage's inputs: the md5 of each input file (as ``dvc.lock`` records
    it) and the digest of the dataset manifest the stage trains or collects on."""
    ws, i = ctx.workspace, spec.iteration
    files: list[Path] = []
    manifest: Path | None = None
    if spec.kind == "collect":
        prev = i - 1
        files = [ws.checkpoint("actor_critic", prev), ws.collector_state(prev), ws.manifest(prev)]
        manifest = ws.manifest(prev)
    elif spec.kind in ("tokenizer", "world_model", "actor_critic"):
        manifest = ws.manifest(i)
        files = [manifest, *(ws.checkpoint(c, i) for c in ("tokenizer", "world_model") if c != spec.kind)]
    elif spec.kind in ("evaluate", "promote"):
        files = [ws.checkpoint(c, i) for c in ("tokenizer", "world_model", "actor_critic")]
    tags = {"dvc.stage": spec.name}
    hashes = {str(p.relative_to(ws.root)): h for p in files if (h := _md5(p)) is not None}
    if hashes:
        tags["dvc.deps_md5"] = json.dumps(hashes, sort_keys=True)
    if manifest is not None and (digest := _md5(manifest)) is not None:
        tags["iris.dataset_manifest_md5"] = digest
    return tags


class MlflowStageTracker:
    """The runner's :class:`~pipelines.stages.runner.Tracker` over an MLflow stage run."""

    def __init__(self, run: Any, root: Path) -> None:
        self.run = run
        self.root = root
        self.run_id: str = run.run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.sink.log(metrics, step)

    def finish(self, result: StageResult, step: int) -> None:
        if result.metrics:
            self.run.log_metrics(result.metrics, step)
        for path, folder in result.artifacts:
            self.run.log_artifact(path, folder)
        if result.tags:
            self.run.set_tags(result.tags)


@contextlib.contextmanager
def mlflow_tracking(ctx: StageContext, spec: StageSpec) -> Iterator[MlflowStageTracker]:
    from pipelines import tracking

    root = ctx.workspace.root
    campaign, name = campaign_identity(ctx)
    tracking.campaign_run_id(
        root,
        campaign,
        name=name,
        params=experiment_tree(ctx),
        tags={"iris.workspace": str(root.resolve()), "iris.seed": str(ctx.config.common.seed)},
    )
    with tracking.stage_run(
        root,
        campaign_id=campaign,
        stage=spec.kind,
        iteration=spec.iteration,
        tags={**input_tags(ctx, spec), "iris.device": str(ctx.device)},
    ) as run:
        try:
            yield MlflowStageTracker(run, root)
        finally:
            _log_console(run)


CONSOLE_ARTIFACT = "console.log"


def _log_console(run: Any) -> None:
    """What the stage printed in this run (its part of ``.iris/logs/<stage>.log``, see
    :mod:`pipelines.console`) as the run's ``console.log`` artifact; never fails the stage."""
    log = console.active()
    text = log.text() if log is not None else ""
    if text:
        with contextlib.suppress(Exception):
            run.log_text(text, CONSOLE_ARTIFACT)
