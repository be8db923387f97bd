"""Prefect settings for the embedded default: no server to start, offline, quiet.

Prefect reads its environment when it is first imported, so `configure_environment` runs before any
`import prefect` in this package (see `pipelines/flows/__init__.py`). Values a user has set win.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Why each: the ephemeral API server takes 10-20 s to start on a small machine (the default timeout
# is 20 s); the server's analytics are its only network call; DVC and MLflow phone home otherwise.
ENVIRONMENT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def configure_environment() -> None:
    """Set the defaults above where the environment does not set them already."""
    for name, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)


@contextmanager
def embedded_settings() -> Iterator[None]:
    """Settings for flow runs on the ephemeral API (no `PREFECT_API_URL`).

    Heartbeats let a server notice crashed runs; the ephemeral API lives and dies with this process,
    so they only cost time (joining the heartbeat thread adds ~1 s to every flow run). The setting
    cannot be unset through the environment, hence a settings context. Against a real server
    (`PREFECT_API_URL` set) nothing changes.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    if PREFECT_API_URL.value():
        yield
        return
    updates: dict[Any, Any] = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    if "PREFECT_SERVER_ANALYTICS_ENABLED" not in os.environ:
        updates[PREFECT_SERVER_ANALYTICS_ENABLED] = False
    if PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() < 120:
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = 120
    with temporary_settings(updates=updates):
        yield
