"""Where the viewers get an agent: a workspace iteration's checkpoints or a registered model."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from iris_core.config import IrisConfig
from iris_core.models.agent import Agent
from iris_core.training.schedule import COMPONENTS
from pipelines.config import load_experiment
from pipelines.stages.common import StageContext, resolve_device
from pipelines.workspace import Workspace


class ModelNotFoundError(RuntimeError):
    """No agent where the user pointed (missing iteration, unknown model URI)."""


@dataclass
class LoadedAgent:
    agent: Agent  # eval mode
    config: IrisConfig
    source: str  # what to print: "<workspace> iteration 3" or the model URI
    tag: str  # for file names: "it3" or "delta-iris-crafter-champion"


def latest_iteration(workspace: Path) -> int | None:
    """The highest iteration with a checkpoint of every component (None if there is none)."""
    ws = Workspace(workspace)
    found = sorted(int(p.stem) for p in (workspace / "state" / "tokenizer").glob("*.pt") if p.stem.isdigit())
    complete = [i for i in found if all(ws.checkpoint(name, i).is_file() for name in COMPONENTS)]
    return complete[-1] if complete else None


def load_agent(
    workspace: Path, iteration: int | None = None, model: str | None = None, device: str = "cpu"
) -> LoadedAgent:
    """The agent of ``iteration`` of ``workspace`` (default: its latest), or of the registered
    ``model`` (``models:/<name>@<alias>``, ``models:/<name>/<version>``) tracked in ``workspace``."""
    if model is not None:
        return _from_registry(workspace, model, device)
    if iteration is None:
        iteration = latest_iteration(workspace)
        if iteration is None:
            raise ModelNotFoundError(f"{workspace} holds no checkpoints yet (state/<component>/<i>.pt)")
    for name in COMPONENTS:
        if not Workspace(workspace).checkpoint(name, iteration).is_file():
            raise ModelNotFoundError(f"{workspace}: iteration {iteration} has no {name} checkpoint")
    experiment = load_experiment(params_file=Workspace(workspace).params)
    context = StageContext(Workspace(workspace), experiment, resolve_device(device))
    agent = context.load_agent(iteration)
    return LoadedAgent(agent, agent.config, f"{workspace} iteration {iteration}", f"it{iteration}")


def _from_registry(workspace: Path, model: str, device: str) -> LoadedAgent:
    from pipelines import tracking
    from pipelines.tracking.policy import load_agent_config

    tracking.configure(workspace)
    with tempfile.TemporaryDirectory() as folder:
        try:
            weights, config_file = tracking.download_agent(model, Path(folder))
        except Exception as error:  # unknown model, alias or version
            raise ModelNotFoundError(f"cannot load {model}: {str(error).splitlines()[0]}") from None
        config = load_agent_config(config_file)
        state = torch.load(weights, map_location="cpu", weights_only=True)
    agent = Agent(config)
    agent.load_state_dict(state)
    agent = agent.to(resolve_device(device)).eval()
    return LoadedAgent(agent, config, model, _slug(model))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text.removeprefix("models:/")).strip("-")
