"""Every component's loss and the imagination rollout compile to one graph, equal to eager.

``torch.compile(fullgraph=True)`` fails on any graph break (a host sync, a data-dependent branch,
an untraceable Python construct). The ``aot_eager`` backend traces forward and backward like
inductor does, but runs torch's own kernels, so the compiled values equal eager ones.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch._dynamo
from agent_helpers import BATCHES, OFF, component_losses, make_batch, small_config
from torch import Tensor

from iris_core.models import runtime
from iris_core.models.agent import Agent
from iris_core.rl.imagination import Imagination, imagine


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    torch._dynamo.reset()


def compiled_copy(agent: Agent, name: str) -> Agent:
    compiled = copy.deepcopy(agent)
    component = getattr(compiled, name)
    component.compute_loss = torch.compile(component.compute_loss, backend="aot_eager", fullgraph=True)
    return compiled


@pytest.mark.parametrize("name", ["tokenizer", "world_model", "actor_critic"])
def test_compute_loss_compiles_to_one_graph_equal_to_eager(name: str) -> None:
    config = small_config()
    if name == "actor_critic":  # the shortest rollout: compile time grows with the horizon
        config = replace(config, actor_critic=replace(config.actor_critic, imagination_horizon=1))
    agent = runtime.apply_runtime(Agent(config), OFF, "cpu")
    compiled = compiled_copy(agent, name)
    batch = make_batch(*BATCHES[name])
    expected = component_losses(agent, name, batch)
    actual = component_losses(compiled, name, batch)
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=1e-5, atol=1e-6, msg=key)
    # The codebook (tokenizer) and the target network (actor-critic) were updated alike.
    for (key, a), b in zip(compiled.state_dict().items(), agent.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)


def test_imagination_compiles_to_one_graph_equal_to_eager() -> None:
    agent = runtime.apply_runtime(Agent(small_config()), OFF, "cpu")
    tokenizer, world_model, actor_critic = (
        agent.tokenizer.eval(),
        agent.world_model.eval(),
        agent.actor_critic,
    )
    batch = make_batch(2, 3)
    obs, act = batch.obs_float(), batch.act[:, :-1]

    def rollout(fn: object) -> Imagination:
        torch.manual_seed(5)
        actor_critic.reset(2)
        result: Imagination = fn(tokenizer, world_model, actor_critic.imagination_policy, obs, act, 2)  # type: ignore[operator]
        actor_critic.clear()
        return result

    expected = rollout(imagine)
    actual = rollout(torch.compile(imagine, backend="aot_eager", fullgraph=True))
    for field in ("obs", "act", "rew", "end"):
        a: Tensor = getattr(actual, field)
        torch.testing.assert_close(a, getattr(expected, field), rtol=1e-5, atol=1e-6, msg=field)
    assert expected.obs.shape == (2, 3, 3, 64, 64)
