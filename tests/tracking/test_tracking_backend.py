"""Where the tracking store and its artifacts live."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from pipelines.tracking import DEFAULT_EXPERIMENT, configure, stage_run, tracking_uri


def test_default_store_is_sqlite_in_the_workspace(tmp_path: Path) -> None:
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_environment_variable_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri(tmp_path) == "http://tracking.example:5000"


def test_experiment_keeps_its_artifacts_in_the_workspace(workspace: Path) -> None:
    experiment_id = configure(workspace)
    experiment = MlflowClient().get_experiment(experiment_id)
    assert experiment.name == DEFAULT_EXPERIMENT
    assert experiment.artifact_location == (workspace / "mlartifacts").resolve().as_uri()
    assert (workspace / "mlflow.db").is_file()


def test_configure_is_cheap_once_the_workspace_is_set_up(workspace: Path) -> None:
    first = configure(workspace)
    start = time.perf_counter()
    again = configure(workspace)
    assert time.perf_counter() - start < 0.5
    assert again == first


def test_named_experiments_are_separate(workspace: Path) -> None:
    other = configure(workspace, experiment="sweep")
    assert other != configure(workspace)
    assert MlflowClient().get_experiment(other).name == "sweep"


def test_nothing_is_written_under_the_working_directory(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with stage_run(workspace, campaign_id="cwd", stage="evaluate", iteration=1) as tracker:
        tracker.log_text("hello", "note.txt")
    assert list(cwd.iterdir()) == []
    assert len(list((workspace / "mlartifacts").rglob("note.txt"))) == 1


def test_environment_store_is_used_for_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_database: Path
) -> None:
    server_db = tmp_path / "server" / "mlflow.db"
    server_db.parent.mkdir()
    shutil.copyfile(migrated_database, server_db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{server_db}")
    workspace = tmp_path / "workspace"
    with stage_run(workspace, campaign_id="env", stage="init", iteration=0) as tracker:
        pass
    assert server_db.is_file()
    assert not (workspace / "mlflow.db").exists()
    assert MlflowClient(f"sqlite:///{server_db}").get_run(tracker.run_id).info.status == "FINISHED"


def test_configuring_one_workspace_then_another_switches_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's own set_tracking_uri writes $MLFLOW_TRACKING_URI; configure must not let the first
    workspace it points at capture every later one in the same process."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, second = tmp_path / "first", tmp_path / "second"
    configure(first)
    configure(second)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert tracking_uri(second) == f"sqlite:///{(second / 'mlflow.db').resolve()}"
    assert mlflow.get_tracking_uri() == tracking_uri(second)
