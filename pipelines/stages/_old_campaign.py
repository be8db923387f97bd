"""A whole training campaign in one process: the paper's epoch loop (spec §2).

For every epoch: collect with the current policy into a new immutable Zarr store, train the
tokenizer, the world model and the actor-critic (each only after its ``start_after_epochs``), and
evaluate on the paper's cadence (test episodes, Crafter score, held-out tokenizer and world-model
losses). Metrics go to ``metrics.jsonl`` in the run folder, the agent to ``agent.pt`` after every
epoch (written atomically).

This is the single-process path behind ``iris train``; the versioned pipeline runs the same steps
as separate DVC stages.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iris_core.config import IrisConfig, config_to_dict
from iris_core.data.sampler import InMemoryEpisodes, SegmentSampler, load_batch, traverse
from iris_core.data.structures import Episode
from iris_core.envs.factory import BatchEnv, make_batch_env
from iris_core.models.agent import Agent
from iris_core.training.collector import Collector, EpisodeMetrics, InferencePolicy, collect_test_epoch
from iris_core.training.optim import make_optimizer
from iris_core.training.scores import crafter_score
from iris_core.training.train_component import enable_tf32, train_component
from pipelines.storage import (
    DatasetManifest,
    EpisodeStoreWriter,
    StoreAttributes,
    ZarrEpisodeDataset,
    write_manifest,
)

COMPONENTS = ("tokenizer", "world_model", "actor_critic")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class StoreSink:
    """Writes the collector's episode parts into one store, numbering the parts of each episode.

    ``next_part`` carries over between stores (an episode continued in the next iteration's store
    gets the next part number).
    """

    def __init__(self, writer: EpisodeStoreWriter, next_part: dict[int, int]) -> None:
        self.writer = writer
        self.next_part = next_part

    def write(self, episode_id: int, part: Episode, *, start: int, finished: bool) -> None:
        number = self.next_part.get(episode_id, 0)
        self.writer.append(part, episode_id=episode_id, part=number)
        if finished:
            self.next_part.pop(episode_id, None)
        else:
            self.next_part[episode_id] = number + 1


class MemorySink:
    """Keeps test episodes in memory (evaluation only needs them for its losses)."""

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


class JsonlSink:
    """Appends ``{"step": ..., "epoch": ..., metrics...}`` lines to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.epoch = 0

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        record = {"epoch": self.epoch, "step": step, **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


@dataclass
class EpochReport:
    epoch: int
    collected_steps: int
    num_episodes: int
    train: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def summarise_test_episodes(episodes: list[EpisodeMetrics]) -> dict[str, float]:
    returns = [m.episode_return for m in episodes]
    summary = {
        "test/return_mean": float(np.mean(returns)),
        "test/length_mean": float(np.mean([m.length for m in episodes])),
        "test/episodes": float(len(episodes)),
    }
    achievements = [m.achievements for m in episodes if m.achievements is not None]
    if achievements and len(achievements) == len(episodes):
        score = crafter_score(achievements)
        summary["test/crafter_score"] = score.score
    return summary


@torch.no_grad()
def held_out_losses(agent: Agent, source: InMemoryEpisodes, config: IrisConfig) -> dict[str, float]:
    """Mean tokenizer and world-model losses over the whole test set, in chunks (spec §2 item 3)."""
    device = agent.device
    results: dict[str, float] = {}
    agent.eval()
    jobs: list[
        tuple[str, Callable[[Any], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]], int, int]
    ] = [
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


def _atomic_torch_save(obj: object, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def run_campaign(
    config: IrisConfig,
    run_dir: Path,
    *,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> list[EpochReport]:
    """Run ``config.common.epochs`` paper epochs in this process, writing into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    episodes_dir = run_dir / "episodes"
    episodes_dir.mkdir(exist_ok=True)
    manifest_url = str(episodes_dir / "manifest.json")
    seed = config.common.seed
    torch.manual_seed(seed)
    device = resolve_device(config.common.device)
    if device.type == "cuda":
        enable_tf32()  # as the reference trains (spec §6)

    collection = config.collection
    # Env workers (collection.*.env_processes) are closed however the run ends.
    with contextlib.ExitStack() as closing:
        train_env = make_batch_env(
            config.env.train, collection.train.num_envs, seed, processes=collection.train.env_processes
        )
        closing.callback(train_env.close)
        # The test envs are started at the first evaluation (none when evaluation is off). They
        # are untouched before it, so starting them late changes no episode.
        test_envs: list[BatchEnv] = []

        def test_env() -> BatchEnv:
            if not test_envs:
                env = make_batch_env(
                    config.env.test,
                    collection.test.num_envs,
                    seed + 1_000_000,
                    processes=collection.test.env_processes,
                )
                closing.callback(env.close)
                test_envs.append(env)
            return test_envs[0]

        config = config.with_num_actions(train_env.num_actions)
        (run_dir / "config.json").write_text(json.dumps(config_to_dict(config), indent=1))

        agent = Agent(config).to(device)
        training = config.training
        component_configs = {name: getattr(training, name) for name in COMPONENTS}
        optimizers = {
            name: make_optimizer(getattr(agent, name), training, component_configs[name])
            for name in COMPONENTS
        }
        samplers = {
            name: SegmentSampler.from_config(
                component_configs[name], can_sample_beyond_end=name != "actor_critic", seed=seed + i
            )
            for i, name in enumerate(COMPONENTS)
        }
        collector = Collector(
            train_env, None, burn_in_length=config.actor_critic.burn_in_length, seed=seed, device=device
        )
        sink = JsonlSink(run_dir / "metrics.jsonl")
        manifest = DatasetManifest()
        next_part: dict[int, int] = {}
        steps_done = dict.fromkeys(COMPONENTS, 0)
        reports = []

        for epoch in range(1, config.common.epochs + 1):
            started = time.perf_counter()
            sink.epoch = epoch
            report = EpochReport(epoch=epoch, collected_steps=0, num_episodes=0)

            # 1. Collect into this epoch's own store, then publish it in the manifest.
            if config.collection.train.steps_in_epoch(epoch) > 0:
                store_name = f"{epoch:05d}.zarr"
                attributes = StoreAttributes(
                    env_id=config.env.train.id or config.env.train.kind,
                    seed=seed,
                    iteration=epoch,
                    policy_version=epoch - 1,
                    obs_shape=(config.tokenizer.image_channels, config.env.train.size, config.env.train.size),
                    with_achievements=config.env.train.kind == "crafter",
                )
                writer = EpisodeStoreWriter.create(str(episodes_dir / store_name), attributes)
                collector.sink = StoreSink(writer, next_part)
                agent.actor_critic.eval()
                phase = time.perf_counter()
                policy = InferencePolicy(agent.actor_critic, bf16=config.collection.train.policy_bf16)
                with writer:
                    result = collector.collect_epoch(policy, epoch, config.collection.train)
                report.train["collect/seconds"] = time.perf_counter() - phase
                manifest = manifest.with_store(store_name)
                write_manifest(manifest_url, manifest)
                report.collected_steps = result.num_steps
                if result.episodes:
                    report.train["collect/return_mean"] = float(
                        np.mean([m.episode_return for m in result.episodes])
                    )
                    report.train["collect/episodes"] = float(len(result.episodes))
            dataset = ZarrEpisodeDataset.from_manifest(manifest_url)
            report.num_episodes = dataset.num_episodes

            # 2. Train the three components in order (spec §2 item 2).
            for name in COMPONENTS:
                num_steps = component_configs[name].steps_in_epoch(epoch)
                if num_steps == 0:
                    continue
                sampler = samplers[name]
                sampler.update_counts = epoch > 1  # counts stay untouched in epoch 1

                def next_batch(
                    sampler: SegmentSampler = sampler, source: ZarrEpisodeDataset = dataset
                ) -> Any:
                    return load_batch(source, sampler.sample(source.episode_lengths()))

                deps: dict[str, object] = {}
                if name == "world_model":
                    deps = {"tokenizer": agent.tokenizer}
                elif name == "actor_critic":
                    deps = {"tokenizer": agent.tokenizer, "world_model": agent.world_model}
                phase = time.perf_counter()
                means = train_component(
                    getattr(agent, name),
                    optimizers[name],
                    component_configs[name],
                    next_batch,
                    num_steps,
                    name=name,
                    deps=deps,
                    sink=sink,
                    first_step=steps_done[name],
                )
                getattr(agent, name).eval()
                steps_done[name] += num_steps
                report.train.update({f"{name}/train/{k}": v for k, v in means.items()})
                report.train[f"{name}/seconds"] = time.perf_counter() - phase

            # 3. Evaluate on the paper's cadence.
            if config.evaluation.should and epoch % config.evaluation.every == 0:
                agent.eval()
                phase = time.perf_counter()
                test_sink = MemorySink()
                test_episodes = collect_test_epoch(
                    test_env(),
                    agent.actor_critic,
                    config.collection.test,
                    burn_in_length=config.actor_critic.burn_in_length,
                    seed=seed + epoch,
                    sink=test_sink,
                    device=device,
                )
                report.evaluation.update(summarise_test_episodes(test_episodes))
                report.evaluation.update(held_out_losses(agent, test_sink.episodes(), config))
                report.evaluation["evaluation/seconds"] = time.perf_counter() - phase

            # 4. Checkpoint and log.
            _atomic_torch_save(
                {
                    "epoch": epoch,
                    "agent": agent.state_dict(),
                    "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                },
                run_dir / "agent.pt",
            )
            report.seconds = time.perf_counter() - started
            sink.log(
                {k: v for k, v in {**report.train, **report.evaluation}.items() if math.isfinite(v)}
                | {"collected_steps": float(report.collected_steps), "seconds": report.seconds},
                step=epoch,
            )
            reports.append(report)
            if on_epoch is not None:
                on_epoch(report)

        return reports
