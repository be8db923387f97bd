"""The MLflow side of a campaign as tables: one row per stage run, every metric point.

Reads the workspace's tracking store (``pipelines.tracking.tracking_uri``); used by the training
dashboard notebook.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd


def _client(workspace: Path) -> Any:
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import tracking_uri

    return MlflowClient(tracking_uri=tracking_uri(workspace))


def stage_runs(workspace: Path) -> pd.DataFrame:
    """One row per stage execution: run_id, campaign, stage, iteration, status, start (UTC)."""
    client = _client(workspace)
    experiments = [e.experiment_id for e in client.search_experiments()]
    rows = []
    for run in client.search_runs(experiments, "tags.`iris.run_kind` = 'stage'", max_results=50_000):
        tags = run.data.tags
        rows.append(
            {
                "run_id": run.info.run_id,
                "campaign": tags.get("iris.campaign"),
                "stage": tags.get("iris.stage"),
                "iteration": int(tags.get("iris.iteration", -1)),
                "status": run.info.status,
                "start": pd.to_datetime(run.info.start_time, unit="ms"),
                "metric_keys": sorted(run.data.metrics),
            }
        )
    columns = ["run_id", "campaign", "stage", "iteration", "status", "start", "metric_keys"]
    return pd.DataFrame(rows, columns=columns).sort_values(["campaign", "start"], ignore_index=True)


def metric_history(workspace: Path, runs: pd.DataFrame, prefix: str = "") -> pd.DataFrame:
    """Every logged point of the metrics starting with ``prefix`` of ``runs``: one row per
    (run, metric, step) with the campaign, stage and iteration of the run."""
    client = _client(workspace)
    rows = []
    run: dict[Any, Any]
    for run in runs.to_dict("records"):
        for key in run["metric_keys"]:
            if not key.startswith(prefix):
                continue
            for point in client.get_metric_history(run["run_id"], key):
                rows.append(
                    {
                        "campaign": run["campaign"],
                        "stage": run["stage"],
                        "iteration": run["iteration"],
                        "metric": key,
                        "step": point.step,
                        "value": point.value,
                    }
                )
    return pd.DataFrame(rows, columns=["campaign", "stage", "iteration", "metric", "step", "value"])
