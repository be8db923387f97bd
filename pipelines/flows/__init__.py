"""Prefect orchestration of the DVC pipeline (docs/orchestration.md).

The environment defaults (`settings.configure_environment`) are set before anything here imports
Prefect, which reads its settings once, at import.
"""

from pipelines.flows.settings import configure_environment, embedded_settings

configure_environment()

from pipelines.flows.train import run_train, train  # noqa: E402

__all__ = ["configure_environment", "embedded_settings", "run_train", "train"]
