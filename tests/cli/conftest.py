"""Fixtures of the CLI tests: an MLflow database made once (its migrations take seconds), copied
into each workspace that needs one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with its tables and no experiment of ours."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_workspace(tmp_path: Path, empty_mlflow_db: Path) -> Path:
    """A folder holding a copy of the empty database and a registered model
    ``delta-iris-crafter`` whose version 1 is the champion (there is no previous champion)."""
    from mlflow import MlflowClient

    workspace = tmp_path / "tracked"
    workspace.mkdir()
    shutil.copy(empty_mlflow_db, workspace / "mlflow.db")
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    client.create_registered_model("delta-iris-crafter")
    version = client.create_model_version("delta-iris-crafter", source=(workspace / "model").as_uri())
    client.set_registered_model_alias("delta-iris-crafter", "champion", version.version)
    return workspace
