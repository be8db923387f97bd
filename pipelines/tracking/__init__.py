"""MLflow for the pipeline: runs per campaign and stage, the agent in the model registry, and the
promotion gate. See docs/tracking.md.

Names are imported on first use, so ``import pipelines.tracking`` costs no MLflow (or torch) import
and ``promotion_gate`` alone needs only numpy and scipy.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# Before MLflow is imported anywhere through this package: no usage reporting from pipeline runs.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

if TYPE_CHECKING:
    from pipelines.tracking.backend import DEFAULT_EXPERIMENT, configure, tracking_uri
    from pipelines.tracking.gate import GateDecision, promotion_gate
    from pipelines.tracking.registry import (
        CHALLENGER,
        CHAMPION,
        PREVIOUS_CHAMPION,
        RegistryError,
        download_agent,
        find_version,
        get_alias_version,
        promote,
        record_decision,
        register_agent,
        rollback,
    )
    from pipelines.tracking.runs import (
        MlflowMetricsSink,
        StageTracker,
        campaign_run_id,
        finish_campaign,
        flatten_params,
        stage_run,
    )

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "DEFAULT_EXPERIMENT",
    "PREVIOUS_CHAMPION",
    "GateDecision",
    "MlflowMetricsSink",
    "RegistryError",
    "StageTracker",
    "campaign_run_id",
    "configure",
    "download_agent",
    "find_version",
    "finish_campaign",
    "flatten_params",
    "get_alias_version",
    "promote",
    "promotion_gate",
    "record_decision",
    "register_agent",
    "rollback",
    "stage_run",
    "tracking_uri",
]

_EXPORTS = {
    "backend": ("DEFAULT_EXPERIMENT", "configure", "tracking_uri"),
    "gate": ("GateDecision", "promotion_gate"),
    "registry": (
        "CHALLENGER",
        "CHAMPION",
        "PREVIOUS_CHAMPION",
        "RegistryError",
        "download_agent",
        "find_version",
        "get_alias_version",
        "promote",
        "record_decision",
        "register_agent",
        "rollback",
    ),
    "runs": (
        "MlflowMetricsSink",
        "StageTracker",
        "campaign_run_id",
        "finish_campaign",
        "flatten_params",
        "stage_run",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
