"""What every stage shares: its context (workspace, config, device), seeding, checkpoints.

Checkpoint of a component (``state/<component>/<i>.pt``), tensors and plain values only, so that
``torch.load(path, weights_only=True)`` reads it:

- ``weights``: the component's state dict (the actor-critic's includes its target network);
- ``optimizer``: the optimizer's state dict (``None`` before the first training step);
- ``sampler``: the component's segment-sampler counts (a tensor) and generator state;
- ``steps`` / ``epochs_done``: optimizer steps taken and paper epochs completed so far;
- ``num_actions``: the environment's action count (the models' sizes depend on it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iris_core.config import IrisConfig, config_to_dict
from iris_core.data.sampler import SegmentSampler
from iris_core.models.agent import Agent
from iris_core.models.runtime import apply_runtime
from iris_core.training.schedule import COMPONENTS, Schedule
from pipelines.atomic import atomic_torch_save, atomic_write_text
from pipelines.config import Experiment, LoopConfig
from pipelines.workspace import Workspace

CHECKPOINT_FORMAT = 1
STAGE_NAMES = (
    "init",
    "collect",
    *COMPONENTS,
    "evaluate",
    "promote",
    *(f"init_{name}" for name in COMPONENTS),
)


class StageError(RuntimeError):
    """A failure that running the stage again cannot fix (bad input, corrupt state): exit code 2."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def stage_seed(seed: int, stage: str, iteration: int) -> int:
    """The torch seed of one stage execution: a function of the campaign seed, the stage and the
    iteration only, so a stage gives the same result in any process and after any restart."""
    sequence = np.random.SeedSequence([seed, STAGE_NAMES.index(stage), iteration])
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


@dataclass(frozen=True)
class StageContext:
    workspace: Workspace
    experiment: Experiment
    device: torch.device

    @property
    def config(self) -> IrisConfig:
        return self.experiment.config

    @property
    def loop(self) -> LoopConfig:
        return self.experiment.loop

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.config, self.loop.epochs_per_iteration)

    def seed(self, stage: str, iteration: int) -> None:
        torch.manual_seed(stage_seed(self.config.common.seed, stage, iteration))

    def build_agent(self, num_actions: int) -> Agent:
        """The agent on this stage's device, with the runtime optimisations of ``runtime`` applied
        (speed and memory only: the same values as the plain modules)."""
        agent = Agent(self.config.with_num_actions(num_actions))
        return apply_runtime(agent, self.config.runtime, self.device)

    def load_agent(self, iteration: int) -> Agent:
        """The agent of ``iteration``: each component from its checkpoint of that iteration."""
        checkpoints = {
            name: read_checkpoint(self.workspace.checkpoint(name, iteration)) for name in COMPONENTS
        }
        agent = self.build_agent(int(checkpoints["tokenizer"]["num_actions"]))
        for name, checkpoint in checkpoints.items():
            getattr(agent, name).load_state_dict(checkpoint["weights"])
        agent.eval()
        return agent


def build_component(config: IrisConfig, name: str) -> torch.nn.Module:
    """One component alone, as :class:`~iris_core.models.agent.Agent` builds it."""
    from iris_core.models.actor_critic import ActorCritic
    from iris_core.models.tokenizer import Tokenizer
    from iris_core.models.world_model import WorldModel

    if name == "tokenizer":
        return Tokenizer(config.tokenizer)
    if name == "world_model":
        return WorldModel(config.world_model)
    return ActorCritic(config.actor_critic, image_channels=config.tokenizer.image_channels)


# ---------------------------------------------------------------------------------------------
# Component checkpoints
# ---------------------------------------------------------------------------------------------


def sampler_state(sampler: SegmentSampler) -> dict[str, Any]:
    state = sampler.state_dict()
    return {"counts": torch.from_numpy(state["counts"]), "rng": state["rng"]}


def load_sampler_state(sampler: SegmentSampler, state: Mapping[str, Any]) -> None:
    sampler.load_state_dict({"counts": state["counts"].numpy(), "rng": state["rng"]})


def write_checkpoint(path: Path, **content: Any) -> None:
    atomic_torch_save({"format": CHECKPOINT_FORMAT, **content}, path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise StageError(f"missing input {path}: run the stage that writes it first (dvc repro)")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise StageError(f"unreadable checkpoint {path}: {error}") from None
    if not isinstance(content, dict) or content.get("format") != CHECKPOINT_FORMAT:
        raise StageError(f"{path} is not a checkpoint of this version (format {CHECKPOINT_FORMAT})")
    return content


def component_sampler(config: IrisConfig, component: str, seed: int) -> SegmentSampler:
    return SegmentSampler.from_config(
        getattr(config.training, component),
        can_sample_beyond_end=component != "actor_critic",
        seed=seed,
    )


# ---------------------------------------------------------------------------------------------
# Small outputs
# ---------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: Path, content: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(_plain(content), indent=1, sort_keys=True, allow_nan=False) + "\n")


def write_tsv(path: Path, rows: list[dict[str, float]]) -> None:
    """A learning curve for ``dvc plots``: one row per logging interval, a ``step`` column first."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    lines = ["\t".join(columns)]
    lines += ["\t".join(_cell(row.get(key)) for key in columns) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _cell(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def digest_files(paths: list[Path], extra: Mapping[str, Any]) -> str:
    """A cheap identity of a stage's inputs (sizes and modification times of files, plus values),
    for deciding whether a mid-stage checkpoint still belongs to the same inputs."""
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for path in paths:
        stat = os.stat(path)
        h.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def config_json(config: IrisConfig) -> dict[str, Any]:
    return config_to_dict(config)
