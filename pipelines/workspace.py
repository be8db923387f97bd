"""The files of a workspace: where each stage reads and writes (docs/pipeline.md).

Paths are relative to the workspace root (the folder holding ``dvc.yaml`` and ``params.yaml``);
``dvc.yaml`` spells the same paths with ``${key}`` for the iteration. Everything a stage writes is
a declared DVC output except ``.iris/`` (work in progress, status files, logs), which DVC never
deletes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

COMPONENTS = ("tokenizer", "world_model", "actor_critic")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    # -- data ------------------------------------------------------------------------------------

    def store(self, iteration: int) -> Path:
        """The immutable Zarr store of the episodes collected in ``iteration``."""
        return self.root / "data" / "episodes" / f"{iteration}.zarr"

    def manifest(self, iteration: int) -> Path:
        """The stores of iterations ``1..iteration``, with their digests."""
        return self.root / "data" / "manifests" / f"{iteration}.json"

    # -- state handed from stage to stage --------------------------------------------------------

    def checkpoint(self, component: str, iteration: int) -> Path:
        assert component in COMPONENTS, component
        return self.root / "state" / component / f"{iteration}.pt"

    def collector_state(self, iteration: int) -> Path:
        return self.root / "state" / "collector" / f"{iteration}.pt"

    # -- results ---------------------------------------------------------------------------------

    def metrics(self, stage: str, iteration: int) -> Path:
        return self.root / "metrics" / stage / f"{iteration}.json"

    def plot(self, stage: str, iteration: int) -> Path:
        return self.root / "plots" / stage / f"{iteration}.tsv"

    def evaluation(self, iteration: int) -> Path:
        """Per-episode returns of the evaluation, with the seeds they were played on."""
        return self.root / "evaluation" / f"{iteration}.json"

    def media(self, iteration: int) -> Path:
        return self.root / "media" / str(iteration)

    def promotion(self, iteration: int) -> Path:
        return self.root / "promotion" / f"{iteration}.json"

    # -- outside DVC -----------------------------------------------------------------------------

    @property
    def scratch(self) -> Path:
        return self.root / ".iris"

    def partial(self, stage: str) -> Path:
        """Mid-stage checkpoints of ``stage`` (e.g. ``tokenizer@3``)."""
        return self.scratch / "partial" / stage

    def status(self, stage: str) -> Path:
        return self.scratch / "status" / f"{stage}.json"

    def log(self, stage: str) -> Path:
        """What the stage printed, run after run (:mod:`pipelines.console`)."""
        return self.scratch / "logs" / f"{stage}.log"

    @property
    def campaign_lock(self) -> Path:
        """The lock a running campaign holds (:mod:`pipelines.flows.lock`)."""
        return self.scratch / "campaign.lock"
