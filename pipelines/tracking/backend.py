"""Where MLflow keeps runs, artifacts and the registry for a workspace.

By default a SQLite database in the workspace (``mlflow.db``; the registry and aliases need a
database backend) with artifacts next to it (``mlartifacts/``). ``MLFLOW_TRACKING_URI`` switches
to a tracking server (or any other store). A fresh database runs its migrations on first use
(several seconds), so each process configures a workspace once and caches the experiment id.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlflow import MlflowClient, set_experiment
from mlflow.entities import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import set_tracking_uri

DEFAULT_EXPERIMENT = "delta-iris"
DATABASE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"

# (tracking URI, experiment name) -> experiment id, for this process.
_experiments: dict[tuple[str, str], str] = {}


def tracking_uri(workspace: Path) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the workspace's SQLite database."""
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    return f"sqlite:///{(Path(workspace) / DATABASE_FILE).resolve()}"


def artifact_location(workspace: Path, uri: str) -> str | None:
    """Artifacts of a local database go to ``<workspace>/mlartifacts``; a server chooses its own.

    Without an explicit location an experiment on a SQLite store would put its artifacts under
    the current working directory of whichever process created it.
    """
    if uri.startswith("sqlite:"):
        return (Path(workspace) / ARTIFACTS_DIR).resolve().as_uri()
    return None


def configure(workspace: Path, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at the workspace's tracking store and return the experiment's id.

    Creates the database (first call in a workspace: migrations) and the experiment, with its
    artifact location, if they do not exist; restores the experiment if it was deleted. Later
    calls in the same process cost nothing. Sets the process-wide tracking URI and experiment, so the
    registry functions (which take only a model name) and logged models use the same store.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in stage logs
    uri = tracking_uri(workspace)
    # MLflow's set_tracking_uri also writes $MLFLOW_TRACKING_URI, which tracking_uri() reads as the
    # user's choice: put the variable back, or the first workspace would capture every later one.
    user_choice = os.environ.get("MLFLOW_TRACKING_URI")
    set_tracking_uri(uri)
    if user_choice is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_choice
    key = (uri, experiment)
    if key in _experiments:
        set_experiment(experiment_id=_experiments[key])
        return _experiments[key]
    if uri.startswith("sqlite:"):
        Path(workspace).mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        try:
            experiment_id = client.create_experiment(
                experiment, artifact_location=artifact_location(workspace, uri)
            )
        except MlflowException as error:
            # Another process created it between our lookup and our insert.
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            found = client.get_experiment_by_name(experiment)
            assert found is not None
            experiment_id = found.experiment_id
    else:
        experiment_id = found.experiment_id
        if found.lifecycle_stage == LifecycleStage.DELETED:
            client.restore_experiment(experiment_id)
    _experiments[key] = experiment_id
    # Models logged without an explicit experiment (MLflow 3 logged models) go to this one too,
    # not to the store's "Default" experiment, whose artifacts would land under the cwd.
    set_experiment(experiment_id=experiment_id)
    return experiment_id


def client() -> MlflowClient:
    """A client on the tracking URI set by :func:`configure` (one per call is cheap: stores are cached)."""
    return MlflowClient()
