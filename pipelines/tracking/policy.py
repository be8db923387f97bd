"""The agent's policy as an MLflow ``pyfunc`` model: frames in, actions out.

The model's artifacts are the agent's state dict (``torch.load(weights_only=True)`` reads it) and
the resolved config as JSON; ``load_context`` rebuilds the agent from them. torch and the model
code are imported there, not when this module is imported, so logging a model costs no torch
import and a stage process that only tracks starts quickly.

``predict`` takes a batch of uint8 frames ``(N, C, H, W)`` (C, H, W from the config: 3×64×64 for
the paper's settings) and returns the greedy action of the actor-critic for each frame, from a
fresh (zero) recurrent state: one step of the policy, as if each frame began an episode.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.pyfunc.model import PythonModel

AGENT_STATE = "agent_state"  # artifact keys of the pyfunc model
CONFIG = "config"

# What loading the policy needs. The model also needs this project's packages (iris_core and
# pipelines.config) importable: it is loaded where the project is installed.
_REQUIREMENTS = ("torch", "numpy", "einops", "omegaconf", "pyyaml", "mlflow")


def pip_requirements() -> list[str]:
    """Pinned requirements of the installed versions (given explicitly: inferring them costs seconds)."""
    pinned = []
    for name in _REQUIREMENTS:
        try:
            version = metadata.version(name).split("+")[0]  # no local build tag (+cpu)
        except metadata.PackageNotFoundError:
            pinned.append(name)
        else:
            pinned.append(f"{name}=={version}")
    return pinned


def load_agent_config(path: Path | str) -> Any:
    """The ``IrisConfig`` from a resolved-config JSON file (checked like any loaded config)."""
    from iris_core.config import IrisConfig
    from pipelines.config import build_dataclass, without_removed_keys

    # Models registered before a key was removed still load (the key did nothing).
    return build_dataclass(IrisConfig, without_removed_keys(json.loads(Path(path).read_text())))


def policy_signature(config_json: Path | str) -> Any:
    """Frames ``(N, C, H, W)`` uint8 in, actions ``(N,)`` int64 out (sizes from the config JSON)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    tokenizer = json.loads(Path(config_json).read_text())["tokenizer"]
    frames = (-1, tokenizer["image_channels"], tokenizer["image_size"], tokenizer["image_size"])
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), frames)]),
        outputs=Schema([TensorSpec(np.dtype(np.int64), (-1,))]),
    )


class AgentPolicy(PythonModel):
    """Greedy actions of the actor-critic for a batch of frames (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        import torch

        from iris_core.models.agent import Agent

        config = load_agent_config(context.artifacts[CONFIG])
        agent = Agent(config)
        state = torch.load(context.artifacts[AGENT_STATE], map_location="cpu", weights_only=True)
        agent.load_state_dict(state)
        self.actor_critic = agent.actor_critic.eval()
        self.frame_shape = (
            config.tokenizer.image_channels,
            config.tokenizer.image_size,
            config.tokenizer.image_size,
        )

    # np.ndarray is a hint MLflow accepts without deriving a schema from it (the signature has one).
    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        import torch

        obs = np.asarray(model_input)
        if obs.ndim != 4 or obs.shape[1:] != self.frame_shape:
            raise ValueError(
                f"expected frames of shape (N, {', '.join(map(str, self.frame_shape))}), got {obs.shape}"
            )
        if obs.dtype != np.uint8:
            if not np.issubdtype(obs.dtype, np.integer) or obs.min() < 0 or obs.max() > 255:
                raise ValueError(f"expected uint8 frames (0..255), got dtype {obs.dtype}")
            obs = obs.astype(np.uint8)
        frames = torch.from_numpy(obs).float().div(255)
        with torch.no_grad():
            self.actor_critic.reset(len(frames))
            try:
                act = self.actor_critic.act(frames, should_sample=False)
            finally:
                self.actor_critic.clear()
        return act.numpy()
