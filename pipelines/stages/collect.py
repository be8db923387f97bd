"""The ``init`` and ``collect@i`` stages: a seeded untrained agent, then experience collection
with the previous iteration's policy into the iteration's own immutable store (docs/method.md §4)."""

from __future__ import annotations

import contextlib
import shutil
import time
from typing import Any

import numpy as np
import torch

from iris_core.data.structures import Episode
from iris_core.envs.factory import make_batch_env, make_env, num_actions_of
from iris_core.training.collector import Collector, InferencePolicy
from iris_core.training.schedule import COMPONENTS
from pipelines.atomic import atomic_directory, atomic_torch_save
from pipelines.progress import Progress
from pipelines.stages.common import (
    StageContext,
    StageError,
    build_component,
    component_sampler,
    read_checkpoint,
    sampler_state,
    write_checkpoint,
    write_json,
)
from pipelines.stages.faults import kill_point
from pipelines.stages.result import StageResult
from pipelines.storage import (
    DatasetManifest,
    EpisodeStoreWriter,
    StoreAttributes,
    read_manifest,
    write_manifest,
)

COLLECTOR_STATE_FORMAT = 1


class StoreSink:
    """Writes the collector's episode parts into one store, numbering the parts of each episode.

    ``next_part`` carries over between stores: an episode continued in the next iteration's store
    gets the next part number.
    """

    def __init__(self, writer: EpisodeStoreWriter, next_part: dict[int, int], stage: str = "") -> None:
        self.writer = writer
        self.next_part = next_part
        self.stage = stage
        self.parts_written = 0

    def write(self, episode_id: int, part: Episode, *, start: int, finished: bool) -> None:
        number = self.next_part.get(episode_id, 0)
        self.writer.append(part, episode_id=episode_id, part=number)
        self.parts_written += 1
        kill_point(self.stage, f"part={self.parts_written}")
        if finished:
            self.next_part.pop(episode_id, None)
        else:
            self.next_part[episode_id] = number + 1


def run_init(ctx: StageContext) -> StageResult:
    """Iteration 0: the untrained agent (seeded), fresh samplers, no collector yet, no stores."""
    ws, config = ctx.workspace, ctx.config
    seed = config.common.seed
    env = make_env(config.env.train, seed)
    try:
        num_actions = num_actions_of(env)
    finally:
        env.close()
    sized = config.with_num_actions(num_actions)
    for index, name in enumerate(COMPONENTS):
        # Each component from its own seed: changing one component's hyperparameters leaves the
        # others' initial weights (and so their stages) untouched.
        ctx.seed(f"init_{name}", 0)
        module = build_component(sized, name)
        write_checkpoint(
            ws.checkpoint(name, 0),
            component=name,
            iteration=0,
            num_actions=num_actions,
            weights=module.state_dict(),
            optimizer=None,
            sampler=sampler_state(component_sampler(config, name, seed + index)),
            steps=0,
            epochs_done=0,
        )
    atomic_torch_save(
        {"format": COLLECTOR_STATE_FORMAT, "collector": None, "next_part": {}}, ws.collector_state(0)
    )
    write_manifest(str(ws.manifest(0)), DatasetManifest())
    return StageResult(metrics={"num_actions": float(num_actions)})


def read_collector_state(ctx: StageContext, iteration: int) -> dict[str, Any]:
    path = ctx.workspace.collector_state(iteration)
    if not path.is_file():
        raise StageError(f"missing input {path}: run the stage that writes it first (dvc repro)")
    # Our own file (pickled environments): not a weights-only checkpoint.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != COLLECTOR_STATE_FORMAT:
        raise StageError(f"{path} is not a collector state of this version")
    return state


def run_collect(ctx: StageContext, iteration: int, prev: int) -> StageResult:
    """Collect the env steps of the iteration's epochs with the policy of iteration ``prev``."""
    ws, config = ctx.workspace, ctx.config
    collection = config.collection.train
    seed = config.common.seed
    ctx.seed("collect", iteration)
    state = read_collector_state(ctx, prev)
    policy_checkpoint = read_checkpoint(ws.checkpoint("actor_critic", prev))
    manifest = read_manifest(str(ws.manifest(prev)))
    agent = ctx.build_agent(int(policy_checkpoint["num_actions"]))
    agent.actor_critic.load_state_dict(policy_checkpoint["weights"])
    agent.eval()

    store = ws.store(iteration)
    if store.exists():  # left by an earlier attempt at this stage (DVC removes it itself)
        shutil.rmtree(store)
    for stale in store.parent.glob(f".{store.name}.*.partial"):  # half-written by a killed attempt
        shutil.rmtree(stale, ignore_errors=True)
    attributes = StoreAttributes(
        env_id=config.env.train.id or config.env.train.kind,
        seed=seed,
        iteration=iteration,
        policy_version=prev,
        obs_shape=(config.tokenizer.image_channels, config.env.train.size, config.env.train.size),
        with_achievements=config.env.train.kind == "crafter",
    )
    next_part = {int(k): int(v) for k, v in state["next_part"].items()}
    started = time.perf_counter()
    steps = 0
    episodes = []
    with contextlib.ExitStack() as closing:
        env = make_batch_env(config.env.train, collection.num_envs, seed, processes=collection.env_processes)
        closing.callback(env.close)
        collector = Collector(
            env, None, burn_in_length=config.actor_critic.burn_in_length, seed=seed, device=ctx.device
        )
        if state["collector"] is not None:
            collector.load_state_dict(state["collector"])
        policy = InferencePolicy(agent.actor_critic, bf16=collection.policy_bf16)
        with atomic_directory(store, create=False) as tmp:
            writer = EpisodeStoreWriter.create(str(tmp), attributes)
            collector.sink = StoreSink(writer, next_part, stage=f"collect@{iteration}")
            plan = ctx.schedule.collection_steps(iteration)
            with writer, Progress(f"collect@{iteration}", sum(n for _, n in plan), unit="env step") as bar:
                for epoch, _ in plan:

                    def report(n: int, base: int = steps) -> None:
                        bar.update(base + n)

                    result = collector.collect_epoch(policy, epoch, collection, on_steps=report)
                    steps += result.num_steps
                    episodes += result.episodes
        kill_point(f"collect@{iteration}", "store_committed")
        new_state = {
            "format": COLLECTOR_STATE_FORMAT,
            "collector": collector.state_dict(),
            "next_part": next_part,
        }
    if steps > 0:
        manifest = manifest.with_store(f"../episodes/{iteration}.zarr")
    write_manifest(str(ws.manifest(iteration)), manifest)
    atomic_torch_save(new_state, ws.collector_state(iteration))

    metrics = {
        "collect/steps": float(steps),
        "collect/episodes": float(len(episodes)),
        "collect/seconds": time.perf_counter() - started,
    }
    if episodes:
        metrics["collect/return_mean"] = float(np.mean([m.episode_return for m in episodes]))
        metrics["collect/length_mean"] = float(np.mean([m.length for m in episodes]))
    write_json(ws.metrics("collect", iteration), metrics)
    return StageResult(metrics=metrics)
