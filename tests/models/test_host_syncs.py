"""No training step and no imagined step makes the host wait for the device.

A read-back (``.item()``, ``bool(tensor)``, a boolean-mask index, ``nonzero``) stalls the CPU until
the device has finished everything queued, which keeps a GPU idle between kernels and breaks
CUDA graphs. Seen at the dispatch level, on CPU, forward and backward alike; the optimizer is
Adam with the fused kernel the optimisation layer picks on CUDA (whose step counters stay on the
device).
"""

from __future__ import annotations

import pytest
import torch
from agent_helpers import BATCHES, OFF, make_batch, small_config
from op_counting import OpCounter, training_step

from iris_core.models import runtime
from iris_core.models.agent import Agent
from iris_core.rl.imagination import imagine
from iris_core.training.optim import make_optimizer


@pytest.mark.parametrize("name", list(BATCHES))
def test_a_training_step_reads_nothing_back(name: str) -> None:
    config = small_config()
    agent = runtime.apply_runtime(Agent(config), OFF, "cpu")
    component = getattr(agent, name)
    optimizer = make_optimizer(component, config.training, getattr(config.training, name))
    for group in optimizer.param_groups:
        group["fused"] = True
    batch = make_batch(*BATCHES[name])
    training_step(agent, name, batch, optimizer)
    with OpCounter() as counter:
        loss = training_step(agent, name, batch, optimizer)
    assert counter.syncs == []
    fused = (
        counter.ops[torch.ops.aten._fused_adam_.default] + counter.ops[torch.ops.aten._fused_adamw_.default]
    )
    assert fused >= 1 and torch.isfinite(loss)


def test_imagination_reads_nothing_back() -> None:
    agent = runtime.apply_runtime(Agent(small_config()), OFF, "cpu")
    batch = make_batch(2, 3)
    agent.actor_critic.reset(2)
    with OpCounter() as counter:
        imagine(
            agent.tokenizer.eval(), agent.world_model.eval(), agent.actor_critic.imagination_policy,
            batch.obs_float(), batch.act[:, :-1], 3,
        )  # fmt: skip
    assert counter.syncs == []


def test_the_instrument_sees_read_backs() -> None:
    x = torch.randn(4)
    with OpCounter() as counter:
        x.sum().item()
        x[x > 0].sum()
        bool(x.max() > 10)
    assert len(counter.syncs) >= 3, counter.syncs
