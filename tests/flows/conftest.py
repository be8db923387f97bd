"""Real Prefect (one test API server for the session) and real DVC in temporary git repos."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from toy_pipeline import write_toy_pipeline

import pipelines.flows  # noqa: F401  (sets the environment defaults before Prefect is imported)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Prefect's test harness (a temporary server and database), PREFECT_HOME in a temp folder."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with (
        temporary_settings(updates={PREFECT_HOME: home, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield


@pytest.fixture(scope="session", autouse=True)
def _dvc_offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """DVC without analytics and with its site cache (repo index, updater state) in a temp folder."""
    saved = {name: os.environ.get(name) for name in ("DVC_NO_ANALYTICS", "DVC_SITE_CACHE_DIR")}
    os.environ["DVC_NO_ANALYTICS"] = "1"
    os.environ["DVC_SITE_CACHE_DIR"] = str(tmp_path_factory.mktemp("dvc-site-cache"))
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def toy_dvc_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_pipeline(tmp_path_factory.mktemp("toy-pipeline"))
