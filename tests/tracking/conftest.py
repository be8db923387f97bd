"""A real MLflow tracking store (SQLite in a temporary workspace), one per test module.

Creating a database runs MLflow's migrations (seconds): they run once per test session, and each
module's workspace starts from a copy of that migrated, empty database. A module shares its
workspace; tests isolate themselves with their own campaign ids and model names.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from pipelines.tracking import configure


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow database with every migration applied."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creating the store migrates it
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, migrated_database: Path) -> Iterator[Path]:
    previous_uri = mlflow.get_tracking_uri()
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        path = tmp_path_factory.mktemp("workspace")
        shutil.copyfile(migrated_database, path / "mlflow.db")
        configure(path)
        yield path
        mlflow.set_tracking_uri(previous_uri)
    # MLflow writes $MLFLOW_TRACKING_URI too: later tests would take it for the user's choice.
    if previous_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous_env


@pytest.fixture(autouse=True)
def _tracking_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test that uses a workspace talks to that workspace's store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if "workspace" in request.fixturenames:
        configure(request.getfixturevalue("workspace"))
