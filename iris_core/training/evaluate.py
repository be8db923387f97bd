"""Evaluation (docs/method.md §4, §5): test episodes with the policy, their scores, the held-out
tokenizer and world-model losses over the test episodes, and reconstructions to look at."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from iris_core.config import IrisConfig
from iris_core.data.sampler import InMemoryEpisodes, traverse
from iris_core.data.structures import Batch, Episode
from iris_core.envs.factory import make_batch_env
from iris_core.models.agent import Agent
from iris_core.training.collector import EpisodeMetrics, collect_test_epoch
from iris_core.training.scores import crafter_score


class MemorySink:
    """Keeps test episodes in memory (the held-out losses and videos need them)."""

    def __init__(self) -> None:
        self.parts: dict[int, list[Episode]] = {}

    def write(self, episode_id: int, part: Episode, *, start: int, finished: bool) -> None:
        self.parts.setdefault(episode_id, []).append(part)

    def episodes(self) -> InMemoryEpisodes:
        source = InMemoryEpisodes()
        for episode_id in sorted(self.parts):
            parts = self.parts[episode_id]
            source.add(
                Episode(
                    obs=np.concatenate([p.obs for p in parts]),
                    act=np.concatenate([p.act for p in parts]),
                    rew=np.concatenate([p.rew for p in parts]),
                    end=np.concatenate([p.end for p in parts]),
                    trunc=np.concatenate([p.trunc for p in parts]),
                    info=parts[-1].info,
                )
            )
        return source


def play_test_episodes(
    agent: Agent,
    config: IrisConfig,
    env_seed: int,
    sink: MemorySink | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> list[EpisodeMetrics]:
    """``collection.test.num_episodes`` test episodes on fresh test envs seeded ``env_seed + k``
    (``on_step(episodes_done, env_steps)``: progress, after every step of the envs).

    Two agents played with the same ``env_seed`` (and torch seed) meet the same worlds episode for
    episode, which is what pairs them in the promotion gate.
    """
    test = config.collection.test
    env = make_batch_env(config.env.test, test.num_envs, env_seed, processes=test.env_processes)
    try:
        agent.eval()
        return collect_test_epoch(
            env,
            agent.actor_critic,
            test,
            burn_in_length=config.actor_critic.burn_in_length,
            seed=env_seed,
            sink=sink,
            device=agent.device,
            on_step=on_step,
        )
    finally:
        env.close()


def summarise_test_episodes(episodes: list[EpisodeMetrics]) -> dict[str, float]:
    returns = [m.episode_return for m in episodes]
    summary = {
        "test/return_mean": float(np.mean(returns)),
        "test/return_std": float(np.std(returns)),
        "test/length_mean": float(np.mean([m.length for m in episodes])),
        "test/episodes": float(len(episodes)),
    }
    achievements = [m.achievements for m in episodes if m.achievements is not None]
    if achievements and len(achievements) == len(episodes):
        summary["test/crafter_score"] = crafter_score(achievements).score
    return summary


@torch.no_grad()
def held_out_losses(agent: Agent, source: InMemoryEpisodes, config: IrisConfig) -> dict[str, float]:
    """Mean tokenizer and world-model losses over the whole test set, in chunks of each
    component's sequence length (no autocast), as the reference evaluates."""
    device = agent.device
    results: dict[str, float] = {}
    agent.eval()
    jobs: list[tuple[str, Callable[[Batch], Any], int, int]] = [
        (
            "tokenizer",
            agent.tokenizer.compute_loss,
            config.training.tokenizer.sequence_length or 0,
            config.evaluation.tokenizer_batch_num_samples or 1,
        ),
        (
            "world_model",
            lambda batch: agent.world_model.compute_loss(batch, agent.tokenizer),
            config.training.world_model.sequence_length or 0,
            config.evaluation.world_model_batch_num_samples or 1,
        ),
    ]
    for name, compute_loss, sequence_length, batch_size in jobs:
        sums: dict[str, float] = {}
        count = 0
        for batch in traverse(source, sequence_length, batch_size):
            losses, metrics = compute_loss(batch.to(device))
            for key, value in {**losses, **metrics}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            sums["loss_total"] = sums.get("loss_total", 0.0) + float(sum(losses.values()))
            count += 1
        for key, total in sums.items():
            results[f"{name}/eval/{key}"] = total / max(count, 1)
    return results


@torch.no_grad()
def reconstructions(agent: Agent, source: InMemoryEpisodes, num_frames: int) -> np.ndarray:
    """``(3, N, C, H, W)`` uint8: previous real frames, next real frames, and the tokenizer's
    reconstruction of the next frames from the Δ-tokens (the first ``num_frames`` transitions)."""
    agent.eval()
    prev: list[np.ndarray] = []
    nxt: list[np.ndarray] = []
    act: list[int] = []
    for episode in source.episodes:
        for t in range(len(episode) - 1):
            if len(prev) == num_frames:
                break
            prev.append(episode.obs[t])
            nxt.append(episode.obs[t + 1])
            act.append(int(episode.act[t]))
    if not prev:
        return np.zeros((3, 0, 0, 0, 0), dtype=np.uint8)
    device = agent.device
    obs_prev = torch.from_numpy(np.stack(prev)).to(device).float().div(255)
    obs_next = torch.from_numpy(np.stack(nxt)).to(device).float().div(255)
    actions = torch.from_numpy(np.asarray(act, dtype=np.int64)).to(device)
    encoding = agent.tokenizer.encode(obs_prev, actions, obs_next)
    decoded = agent.tokenizer.decode(obs_prev, actions, encoding.q, should_clamp=True)
    out = (decoded.mul(255).round().clamp(0, 255).to(torch.uint8)).cpu().numpy()
    return np.stack([np.stack(prev), np.stack(nxt), out])
