"""The agent: the three learned components of Δ-IRIS in one module.

Its ``state_dict`` is the checkpointed agent: the tokenizer (with its EMA codebook buffers), the
world model, and the actor-critic with its Polyak target network. Recurrent state of the LSTMs
is not part of it (it is not restored on resume).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from iris_core.config import IrisConfig
from iris_core.models.actor_critic import ActorCritic
from iris_core.models.tokenizer import Tokenizer
from iris_core.models.world_model import WorldModel

COMPONENTS = ("tokenizer", "world_model", "actor_critic")


class Agent(nn.Module):
    def __init__(self, config: IrisConfig) -> None:
        super().__init__()
        assert config.num_actions is not None, "set num_actions (IrisConfig.with_num_actions) first"
        self.config = config
        self.tokenizer = Tokenizer(config.tokenizer)
        self.world_model = WorldModel(config.world_model)
        self.actor_critic = ActorCritic(config.actor_critic, image_channels=config.tokenizer.image_channels)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def load_components(
        self, state_dict: Mapping[str, Tensor], components: Iterable[str] = COMPONENTS
    ) -> None:
        """Restore only ``components`` from a whole-agent state dict (warm starts).

        Each named component must be complete in ``state_dict`` (strict loading).
        """
        for name in components:
            if name not in COMPONENTS:
                raise ValueError(f"unknown component {name!r}; expected one of {COMPONENTS}")
            prefix = f"{name}."
            component_state = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            module = getattr(self, name)
            assert isinstance(module, nn.Module)
            module.load_state_dict(component_state)
