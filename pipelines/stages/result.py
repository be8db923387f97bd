"""What a stage function returns to the code that runs it (tracking, the flow, the loop)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageResult:
    # Per-iteration values (logged once, on the epoch axis); the per-step curves go to the sink.
    metrics: dict[str, float] = field(default_factory=dict)
    # Files worth attaching to the stage's MLflow run: (path, folder in the run's artifacts).
    artifacts: list[tuple[Path, str]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
