"""Orchestration overhead of a whole campaign: wall time minus the stages' own compute.

Runs a campaign through the Prefect flow (embedded API) and DVC in a fresh workspace, then, per
stage, compares the flow task's wall time (Prefect + ``dvc repro --single-item`` + process start +
imports + the stage) with the time the stage function itself took (``<kind>/wall_seconds``, logged
to the stage's MLflow run). Prints a table per stage and the totals, and the DVC cache size.

Run: ``python benchmarks/orchestration.py [overrides ...]`` (default: ``params=quickstart``);
e.g. ``python benchmarks/orchestration.py params=quickstart loop.epochs_per_iteration=3`` shows how
the share falls with K.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def main() -> None:
    overrides = sys.argv[1:] or ["params=quickstart"]
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from mlflow import MlflowClient

    from pipelines.config import params_text
    from pipelines.flows.train import run_train

    with tempfile.TemporaryDirectory(prefix="iris-orchestration-") as folder:
        workspace = Path(folder) / "ws"
        text, _ = params_text(overrides=overrides)
        started = time.perf_counter()
        summary = run_train(workspace=str(workspace), params_yaml=text, dvc_yaml=str(PROJECT / "dvc.yaml"))
        total = time.perf_counter() - started

        client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("delta-iris")
        assert experiment is not None
        compute: dict[str, float] = {}
        for run in client.search_runs([experiment.experiment_id], max_results=10_000):
            tags, metrics = run.data.tags, run.data.metrics
            if tags.get("iris.run_kind") != "stage":
                continue
            kind, iteration = tags["iris.stage"], tags["iris.iteration"]
            name = kind if kind == "init" else f"{kind}@{iteration}"
            compute[name] = metrics.get(f"{kind}/wall_seconds", float("nan"))

        print(f"{'stage':<18}{'task s':>9}{'stage s':>9}{'overhead s':>12}")
        task_total = compute_total = 0.0
        for outcome in summary["stages"]:
            stage, seconds = outcome["stage"], outcome["seconds"]
            own = compute.get(stage, float("nan"))
            task_total += seconds
            compute_total += own
            print(f"{stage:<18}{seconds:>9.1f}{own:>9.1f}{seconds - own:>12.1f}")
        overhead = total - compute_total
        print(f"\ncampaign wall time {total:.1f} s; stages' own compute {compute_total:.1f} s")
        print(f"orchestration overhead {overhead:.1f} s = {100 * overhead / total:.1f}% of the campaign")
        print(
            "  of which outside the stage tasks (flow start, ephemeral API, artifacts): "
            f"{total - task_total:.1f} s"
        )
        print(
            "  per stage task (process start, imports, DVC): "
            f"{(task_total - compute_total) / len(summary['stages']):.1f} s"
        )
        cache = subprocess.run(
            ["du", "-sb", str(workspace / ".dvc" / "cache")], capture_output=True, text=True
        )
        if cache.returncode == 0:
            size = int(cache.stdout.split()[0])
            print(
                f"DVC cache: {size / 1e6:.1f} MB after {len(summary['iterations'])} iterations with a report"
            )


if __name__ == "__main__":
    main()
