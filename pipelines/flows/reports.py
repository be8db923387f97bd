"""What the flow shows in Prefect's UI: one markdown summary per iteration, one progress bar, and
the campaign's report (``iris report``) after its last promotion.

Built from the files the stages leave behind (`metrics/<stage>/<i>.json`, flat `{name: float}`;
`promotion/<i>.json`, the promotion decision with its evidence and the MLflow run ids). Pure
functions; the flow publishes the results as artifacts.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"
SCORE_STAGES = ("evaluate",)
TRAINING_STAGES = ("collect", "tokenizer", "world_model", "actor_critic")


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from free text."""
    key = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    return key or "campaign"


def mlflow_ui_base() -> str:
    return os.environ.get("IRIS_MLFLOW_UI", DEFAULT_MLFLOW_UI).rstrip("/")


def mlflow_run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def mlflow_artifact_url(base: str, experiment_id: str, run_id: str, path: str) -> str:
    """The MLflow UI's page of one artifact of a run (it previews HTML and images)."""
    return f"{mlflow_run_url(base, experiment_id, run_id)}/artifactPath/{path}"


@dataclass(frozen=True)
class IterationRecord:
    """What the files of one iteration say."""

    iteration: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # stage name -> metrics
    promotion: dict[str, Any] | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_iteration(workspace: Path, iteration: str) -> IterationRecord:
    metrics = {}
    for stage in TRAINING_STAGES + SCORE_STAGES:
        values = _read_json(workspace / "metrics" / stage / f"{iteration}.json")
        if isinstance(values, dict):
            metrics[stage] = values
    promotion = _read_json(workspace / "promotion" / f"{iteration}.json")
    return IterationRecord(iteration, metrics, promotion if isinstance(promotion, dict) else None)


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value).replace("|", "\\|")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_number(cell) for cell in row) + " |" for row in rows]
    return lines


def _promotion_lines(promotion: dict[str, Any]) -> list[str]:
    decision = promotion.get("decision", "unknown")
    model = promotion.get("registered_model", "?")
    champion = promotion.get("champion_version")
    against = f"champion was version {champion}" if champion is not None else "no champion before"
    lines = [
        f"**Promotion: {decision}**: version {promotion.get('version', '?')} of `{model}` ({against}).",
        "",
        str(promotion.get("reason", "")),
        "",
    ]
    evidence = promotion.get("evidence") or {}
    if evidence:
        lines += [*_table(("evidence", "value"), sorted(evidence.items())), ""]
    return lines


def _mlflow_lines(promotion: dict[str, Any], base: str) -> list[str]:
    """Links to the iteration's MLflow runs; bare run ids where no experiment id says where they are."""
    tracking = promotion.get("mlflow") or {}
    runs = {**(tracking.get("run_ids") or {})}
    if tracking.get("parent_run_id"):
        runs = {"campaign run": tracking["parent_run_id"], **runs}
    if tracking.get("run_id"):
        runs.setdefault("promotion run", tracking["run_id"])
    if not runs:
        return []
    experiment = tracking.get("experiment_id")
    lines = ["## MLflow runs", ""]
    for label, run_id in runs.items():
        if experiment is None:
            lines.append(f"- {label}: run `{run_id}`")
        else:
            lines.append(f"- [{label}]({mlflow_run_url(base, str(experiment), str(run_id))})")
    return [*lines, ""]


def _loss_rows(record: IterationRecord) -> list[tuple[Any, ...]]:
    """One row per component: its total loss on training batches and on held-out data."""
    rows = []
    evaluation = record.metrics.get("evaluate", {})
    for component in TRAINING_STAGES[1:]:
        train = record.metrics.get(component, {}).get(f"{component}/iteration/loss_total")
        held_out = evaluation.get(
            f"{component}/eval/loss_total",
            record.metrics.get(component, {}).get(f"{component}/eval/loss_total"),
        )
        if train is not None or held_out is not None:
            rows.append((component, train, held_out))
    return rows


def iteration_markdown(record: IterationRecord, campaign: str, ui_base: str | None = None) -> str:
    """The iteration's summary: promotion decision and evidence, scores, losses, every metric, MLflow
    links."""
    base = ui_base if ui_base is not None else mlflow_ui_base()
    i = record.iteration
    lines = [f"# Campaign `{campaign}`: iteration {i}", ""]
    if record.promotion is not None:
        lines += _promotion_lines(record.promotion)
    else:
        lines += ["No evaluation in this iteration.", ""]
    scores = sorted(
        (name, value)
        for name, value in record.metrics.get("evaluate", {}).items()
        if name.startswith("test/")
    )
    if scores:
        lines += [f"## Scores (evaluate@{i})", "", *_table(("metric", "value"), scores), ""]
    losses = _loss_rows(record)
    if losses:
        lines += ["## Losses", "", *_table(("component", "train loss_total", "eval loss_total"), losses), ""]
    every = [
        (f"{stage}@{i}", name, value)
        for stage in TRAINING_STAGES + SCORE_STAGES
        for name, value in sorted(record.metrics.get(stage, {}).items())
    ]
    if every:
        lines += ["## All metrics", "", *_table(("stage", "metric", "value"), every), ""]
    if record.promotion is not None:
        lines += _mlflow_lines(record.promotion, base)
    return "\n".join(lines).rstrip() + "\n"


def promotion_summary(record: IterationRecord) -> dict[str, Any] | None:
    """The few promotion fields the flow returns (identifiers and the decision, no evidence tables)."""
    if record.promotion is None:
        return None
    keep = ("decision", "reason", "registered_model", "version", "champion_version")
    return {name: record.promotion.get(name) for name in keep}
