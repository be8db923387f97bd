"""Runs: one parent run per campaign, one child run per stage execution.

A campaign's parent run is found by its tag ``iris.campaign`` (and ``iris.run_kind=campaign``),
so every stage process of the campaign attaches its child run to the same parent without any
process remembering another. A child run carries the stage, the iteration, the campaign, the git
commit and whatever the caller adds (the DVC stage hash, the dataset manifest digest).

Params are the flattened config (``a.b.c`` keys). Metrics have steps; the training loop's
``MetricsSink`` (``StageTracker.sink``) queues them for a background thread that writes them in
batches, so a training step never waits for the database; they are all written before the run
ends.

Non-finite metric values (NaN, ±inf) are logged as NaN: the point stays visible as a gap in the
curve, the sign of an infinity is not kept, and every backend stores the same thing (SQL stores
would otherwise clamp infinities to ±1.8e308).
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import queue
import re
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_USER
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

from pipelines.tracking.backend import DEFAULT_EXPERIMENT, configure

logger = logging.getLogger(__name__)

TAG_CAMPAIGN = "iris.campaign"
TAG_RUN_KIND = "iris.run_kind"  # "campaign" (parent) or "stage" (child)
TAG_STAGE = "iris.stage"
TAG_ITERATION = "iris.iteration"
TAG_ERROR = "iris.error"
TAG_METRICS_INCOMPLETE = "iris.metrics_incomplete"
TRUNCATED = "...[truncated]"
PARAMS_ARTIFACT = "params.json"  # every param in full, next to the (possibly truncated) MLflow params

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:@/+=-]+$")


# ---------------------------------------------------------------------------------------------
# Params
# ---------------------------------------------------------------------------------------------


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings → ``{"a.b.c": value}``; strings as they are, everything else as JSON."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def _fit_param(value: str) -> str:
    if len(value) <= MAX_PARAM_VAL_LENGTH:
        return value
    return value[: MAX_PARAM_VAL_LENGTH - len(TRUNCATED)] + TRUNCATED


def _log_params(client: MlflowClient, run_id: str, flat: Mapping[str, str]) -> None:
    """Log params in batches of MLflow's size limit; values over its length limit are truncated
    (the run's ``params.json`` artifact keeps them whole)."""
    items = [Param(key, _fit_param(value)) for key, value in flat.items()]
    for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=items[start : start + MAX_PARAMS_TAGS_PER_BATCH])
    if any(len(value) > MAX_PARAM_VAL_LENGTH for value in flat.values()):
        client.log_text(run_id, json.dumps(dict(flat), indent=1, sort_keys=True), PARAMS_ARTIFACT)


def _check_id(value: str, what: str) -> str:
    # Ids go into search filters: keep them to characters that need no quoting.
    if not _SAFE_ID.match(value):
        raise ValueError(f"{what} {value!r}: use letters, digits and _ . : @ / + = - only")
    return value


# ---------------------------------------------------------------------------------------------
# Context tags
# ---------------------------------------------------------------------------------------------


@cache
def git_commit(directory: Path) -> str | None:
    """``git rev-parse HEAD`` in ``directory``; None when it is not a git checkout (or no git)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def _user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no user name in containers without a passwd entry
        return None


# ---------------------------------------------------------------------------------------------
# The campaign's parent run
# ---------------------------------------------------------------------------------------------


def _find_campaign_runs(client: MlflowClient, experiment_id: str, campaign_id: str) -> list[Any]:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_CAMPAIGN}` = '{campaign_id}' and tags.`{TAG_RUN_KIND}` = 'campaign'",
        max_results=100,
    )
    # The oldest wins, so processes that raced to create it all settle on the same run.
    return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))


def campaign_run_id(
    workspace: Path,
    campaign_id: str,
    *,
    name: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> str:
    """The id of the campaign's parent run, created (RUNNING) on first use.

    ``params``: the resolved config as a nested mapping, logged flattened. On an existing run only
    params it lacks are logged (a param's value cannot change in MLflow; a different value is
    reported as a warning and the first one kept); ``tags`` are set again.
    """
    _check_id(campaign_id, "campaign id")
    experiment_id = configure(workspace, experiment)
    client = MlflowClient()
    found = _find_campaign_runs(client, experiment_id, campaign_id)
    flat = flatten_params(params or {})
    if found:
        run = found[0]
        logged = run.data.params
        changed = sorted(k for k, v in flat.items() if k in logged and logged[k] != _fit_param(v))
        if changed:
            warnings.warn(
                f"campaign {campaign_id}: params already logged with other values, kept: {changed[:5]}",
                stacklevel=2,
            )
        _log_params(client, run.info.run_id, {k: v for k, v in flat.items() if k not in logged})
        if tags:
            client.log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return str(run.info.run_id)

    run_tags = {TAG_CAMPAIGN: campaign_id, TAG_RUN_KIND: "campaign", **(tags or {})}
    commit = git_commit(Path(workspace).resolve())
    if commit:
        run_tags.setdefault(MLFLOW_GIT_COMMIT, commit)
    if user := _user():
        run_tags.setdefault(MLFLOW_USER, user)
    created = client.create_run(experiment_id, tags=run_tags, run_name=name or campaign_id)
    run_id = created.info.run_id
    found = _find_campaign_runs(client, experiment_id, campaign_id)
    if found and found[0].info.run_id != run_id:
        # Another process created the parent at the same moment: use the oldest, drop ours.
        client.delete_run(run_id)
        return campaign_run_id(workspace, campaign_id, params=params, tags=tags, experiment=experiment)
    _log_params(client, run_id, flat)
    return str(run_id)


def finish_campaign(
    workspace: Path, campaign_id: str, status: str = "FINISHED", experiment: str = DEFAULT_EXPERIMENT
) -> None:
    """End the campaign's parent run (``FINISHED``, ``FAILED`` or ``KILLED``), if it exists."""
    experiment_id = configure(workspace, experiment)
    client = MlflowClient()
    for run in _find_campaign_runs(client, experiment_id, _check_id(campaign_id, "campaign id"))[:1]:
        client.set_terminated(run.info.run_id, status)


# ---------------------------------------------------------------------------------------------
# A stage execution's child run
# ---------------------------------------------------------------------------------------------


def _now_ms() -> int:
    return int(time.time() * 1000)


def _finite_or_nan(value: float) -> float:
    number = float(value)
    return number if math.isfinite(number) else math.nan


class MlflowMetricsSink:
    """The training loop's ``MetricsSink``: ``log`` queues a report and returns at once; one
    background thread writes whatever has queued up as one batch per round trip.

    (MLflow's own asynchronous queue logs each report separately and, when its run ends, waits up
    to a second for its polling thread; this one stops as soon as it has drained.)
    A report that cannot be written does not interrupt training: the first error is raised by
    :meth:`close`, after everything else was written.
    """

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self._client = client
        self._run_id = run_id
        self._queue: queue.SimpleQueue[list[Metric] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self.error: Exception | None = None
        self.num_lost = 0  # metric values that could not be written

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if self._closed:
            raise RuntimeError(f"run {self._run_id}: the metrics sink is closed")
        timestamp = _now_ms()
        self._queue.put([Metric(key, _finite_or_nan(v), timestamp, int(step)) for key, v in metrics.items()])
        if self._thread is None:
            with self._start_lock:  # one writer, even if several threads report at once
                if self._thread is None:
                    thread = threading.Thread(target=self._write, name="mlflow-metrics", daemon=True)
                    thread.start()
                    self._thread = thread

    def _write(self) -> None:
        stop = False
        while not stop:
            reports = [self._queue.get()]
            while not self._queue.empty():
                reports.append(self._queue.get())
            stop = None in reports
            metrics = [metric for report in reports if report is not None for metric in report]
            for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
                chunk = metrics[start : start + MAX_METRICS_PER_BATCH]
                try:
                    self._client.log_batch(self._run_id, metrics=chunk)
                except Exception as error:
                    self.error = self.error or error
                    self.num_lost += len(chunk)

    def close(self) -> None:
        """Write everything queued, stop the thread; raise the first write error, if any."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"{self.num_lost} metric values not logged: {self.error}") from self.error


class StageTracker:
    """What a stage logs to its child run. Artifact paths are relative to the run's artifact root."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.sink = MlflowMetricsSink(client, run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log now (synchronously): for a stage's summary metrics."""
        timestamp = _now_ms()
        batch = [Metric(key, _finite_or_nan(value), timestamp, int(step)) for key, value in metrics.items()]
        for start in range(0, len(batch), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[start : start + MAX_METRICS_PER_BATCH])

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a nested mapping of params, flattened to ``a.b.c`` keys."""
        _log_params(self.client, self.run_id, flatten_params(params))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(key, str(value)) for key, value in tags.items()]
        for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=items[start : start + MAX_PARAMS_TAGS_PER_BATCH])

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: Path | str, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)


def _end_status(error: BaseException | None) -> str:
    if error is None:
        return RunStatus.to_string(RunStatus.FINISHED)
    if isinstance(error, KeyboardInterrupt):
        return RunStatus.to_string(RunStatus.KILLED)
    if isinstance(error, SystemExit) and error.code in (0, None):
        return RunStatus.to_string(RunStatus.FINISHED)
    return RunStatus.to_string(RunStatus.FAILED)


@contextmanager
def stage_run(
    workspace: Path,
    *,
    campaign_id: str,
    stage: str,
    iteration: int,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> Iterator[StageTracker]:
    """A child run of the campaign's parent for one stage execution.

    Ends FINISHED when the block completes, FAILED when it raises (the exception propagates, its
    message is kept in the ``iris.error`` tag), KILLED on KeyboardInterrupt. Queued metrics are
    flushed first; if some could not be written the run is tagged ``iris.metrics_incomplete``
    and a warning is issued, but the stage's own outcome decides the status.
    """
    experiment_id = configure(workspace, experiment)
    parent_id = campaign_run_id(workspace, campaign_id, experiment=experiment)
    client = MlflowClient()
    run_tags: dict[str, str] = {
        MLFLOW_PARENT_RUN_ID: parent_id,
        TAG_CAMPAIGN: campaign_id,
        TAG_RUN_KIND: "stage",
        TAG_STAGE: stage,
        TAG_ITERATION: str(int(iteration)),
    }
    commit = git_commit(Path(workspace).resolve())
    if commit:
        run_tags[MLFLOW_GIT_COMMIT] = commit
    if user := _user():
        run_tags[MLFLOW_USER] = user
    run_tags.update({key: str(value) for key, value in (tags or {}).items()})
    run = client.create_run(experiment_id, tags=run_tags, run_name=f"{stage}@{iteration}")
    tracker = StageTracker(client, run.info.run_id)
    error: BaseException | None = None
    try:
        if params:
            tracker.log_params(params)
        yield tracker
    except BaseException as raised:
        error = raised
        raise
    finally:
        _close(tracker, error)


def _close(tracker: StageTracker, error: BaseException | None) -> None:
    closing_tags: list[RunTag] = []
    try:
        tracker.sink.close()
    except Exception as flush_error:
        warnings.warn(f"run {tracker.run_id}: some metrics were not logged: {flush_error}", stacklevel=3)
        closing_tags.append(RunTag(TAG_METRICS_INCOMPLETE, "true"))
    if error is not None and not isinstance(error, KeyboardInterrupt | GeneratorExit):
        closing_tags.append(RunTag(TAG_ERROR, f"{type(error).__name__}: {error}"[:1000]))
    try:
        if closing_tags:
            tracker.client.log_batch(tracker.run_id, tags=closing_tags)
        tracker.client.set_terminated(tracker.run_id, _end_status(error))
    except Exception:
        if error is None:
            raise
        # The stage's own exception matters more than a tracking error while ending its run.
        logger.exception("could not end run %s", tracker.run_id)


def stage_run_ids(
    workspace: Path, campaign_id: str, *, stage: str | None = None, experiment: str = DEFAULT_EXPERIMENT
) -> Sequence[str]:
    """Ids of the campaign's stage runs (optionally of one stage), oldest first."""
    experiment_id = configure(workspace, experiment)
    campaign_id = _check_id(campaign_id, "campaign id")
    query = f"tags.`{TAG_CAMPAIGN}` = '{campaign_id}' and tags.`{TAG_RUN_KIND}` = 'stage'"
    if stage is not None:
        query += f" and tags.`{TAG_STAGE}` = '{_check_id(stage, 'stage')}'"
    runs = MlflowClient().search_runs([experiment_id], filter_string=query, max_results=10000)
    return [run.info.run_id for run in sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))]
