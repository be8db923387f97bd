"""Ops per optimizer step and per imagined step at the paper's batch sizes (Crafter preset).

Counted on the ``meta`` device (shapes only, no arithmetic), for the agent as a GPU runs it: the
plain modules with the optimisation layer's CUDA defaults (channels-last; compile off). On a GPU
each op is at least one kernel launch, so these counts bound how launch-bound a step is. The
bounds are below the reference code's counts (tokenizer 655, world model 683, actor-critic
13,422 per step) with a margin for small changes.
"""

from __future__ import annotations

import pytest
import torch
from op_counting import OpCounter, paper_batch, training_step

from iris_core.config import IrisConfig, RuntimeConfig
from iris_core.models import runtime
from iris_core.models.agent import Agent
from iris_core.models.convnet import FrameDecoder, FrameEncoder
from iris_core.rl.imagination import imagine
from iris_core.training.optim import make_optimizer

BOUNDS = {"tokenizer": 600, "world_model": 650, "actor_critic": 11_000}


def agent_as_the_gpu_runs_it(config: IrisConfig) -> Agent:
    with torch.device("meta"):
        agent = Agent(config)
    settings = runtime.resolve_runtime(RuntimeConfig(), "cuda")
    assert not settings.checkpoint_cnns and not settings.compile
    for cnn in [m for m in agent.modules() if isinstance(m, FrameEncoder | FrameDecoder)]:
        runtime.optimise_cnn(cnn, settings)
    return agent


@pytest.mark.parametrize("name", list(BOUNDS))
def test_ops_per_optimizer_step_at_the_paper_batch_sizes(name: str) -> None:
    config = IrisConfig().with_num_actions(17)
    agent = agent_as_the_gpu_runs_it(config)
    component = getattr(agent, name)
    # foreach Adam: the fused CUDA kernel (one op) is not available on meta, so this over-counts.
    optimizer = make_optimizer(component, config.training, getattr(config.training, name))
    for group in optimizer.param_groups:
        group["foreach"] = True
    batch = paper_batch(config, name, "meta")
    training_step(agent, name, batch, optimizer)  # the first step also creates Adam's state
    with OpCounter() as counter:
        training_step(agent, name, batch, optimizer)
    # Non-capturable Adam reads its step counters, which live on the host: not device work.
    total = counter.total - counter.ops[torch.ops.aten._local_scalar_dense.default]
    assert 100 < total <= BOUNDS[name], (total, counter.ops.most_common(10))


def test_ops_per_imagined_step() -> None:
    config = IrisConfig().with_num_actions(17)
    agent = agent_as_the_gpu_runs_it(config)
    batch = paper_batch(config, "actor_critic", "meta")
    obs, act = batch.obs_float(), batch.act[:, :-1]
    tokenizer, world_model, actor_critic = (
        agent.tokenizer.eval(),
        agent.world_model.eval(),
        agent.actor_critic,
    )
    counts = []
    for horizon in (1, 3):
        actor_critic.reset(obs.size(0))
        with OpCounter() as counter:
            imagine(tokenizer, world_model, actor_critic.imagination_policy, obs, act, horizon)
        counts.append(counter.total)
        assert not counter.syncs
    per_step = (counts[1] - counts[0]) / 2
    assert 100 < per_step <= 600, counts
