"""Workspaces that run the real stages on a tiny Crafter campaign, with real ``dvc`` and git
(the fixtures are in ``conftest.py``).

A workspace is a temporary git + DVC repository holding a copy of the project's ``dvc.yaml`` and a
``params.yaml`` written from :data:`TINY`. MLflow writes to the workspace's own ``mlflow.db``, so
nothing is written into the project checkout. The expensive pieces are session fixtures:

- :func:`campaign`: ``dvc repro`` of the whole tiny campaign (2 iterations), run once;
- :func:`reference`: the in-process loop (``run_campaign``) on the same params plus one more
  iteration, in another workspace, run while ``dvc repro`` runs.

Tests that change a workspace copy it first (:func:`copy_workspace`).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines.config import write_params
from pipelines.workspace import Workspace

PROJECT = Path(__file__).resolve().parents[1]

# A tiny Crafter campaign: 2 iterations of K = 1 epoch, each evaluated and gated. The tokenizer
# takes 4 steps in iteration 1 and every step is a logged chunk followed by a mid-stage checkpoint,
# so a training stage has a middle to kill in.
TINY = [
    "params=quickstart",
    "common.epochs=2",
    "common.device=cpu",
    "evaluation.every=1",
    "collection.train.num_envs=2",
    "collection.train.num_steps_first_epoch=120",
    "collection.train.num_steps=60",
    "collection.train.env_processes=1",
    "collection.test.num_envs=2",
    "collection.test.num_episodes=2",
    "collection.test.env_processes=1",
    "env.test.max_episode_steps=12",
    "training.world_model.sequence_length=8",
    "actor_critic.imagination_horizon=2",
    "training.tokenizer.batch_num_samples=2",
    "training.world_model.batch_num_samples=2",
    "training.actor_critic.batch_num_samples=2",
    "training.tokenizer.steps_first_epoch=4",
    "training.tokenizer.steps_per_epoch=2",
    "training.world_model.steps_first_epoch=2",
    "training.world_model.steps_per_epoch=1",
    "training.actor_critic.steps_first_epoch=1",
    "training.actor_critic.steps_per_epoch=1",
    "loop.log_every_steps=1",
    "loop.checkpoint_every_seconds=0",
]
STAGE_TIMEOUT = 1500  # seconds for one `dvc repro` of the tiny campaign on a busy 2-core machine
RUNNING = re.compile(r"Running stage '([^']+)'")
COMPONENTS = ("tokenizer", "world_model", "actor_critic")


def campaign_stages(iterations: Sequence[int], evaluations: Sequence[int]) -> set[str]:
    stages = {f"{kind}@{i}" for i in iterations for kind in ("collect", *COMPONENTS)}
    return stages | {f"{kind}@{i}" for i in evaluations for kind in ("evaluate", "promote")}


# ---------------------------------------------------------------------------------------------
# Environment and commands
# ---------------------------------------------------------------------------------------------


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of an `iris` / `dvc` child: `iris` on PATH, no outside MLflow store or
    config folder, no telemetry, no fault injection unless ``extra`` asks for it."""
    env = dict(os.environ)
    for name in ("MLFLOW_TRACKING_URI", "IRIS_TEST_KILL_AT", "IRIS_TEST_NO_SPACE", "IRIS_CONFIG_DIR"):
        env.pop(name, None)
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DVC_NO_ANALYTICS": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    env.update(extra or {})
    return env


def subprocess_env(site_cache: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """:func:`child_env` for the workspace runner: offline DVC with its site cache and a git
    identity for the workspace's commits."""
    settings = {
        "DVC_SITE_CACHE_DIR": str(site_cache),
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.invalid",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.invalid",
    }
    return child_env({**settings, **(extra or {})})


@dataclass
class Runner:
    """Runs commands in workspaces with the test environment."""

    site_cache: Path

    def run(
        self,
        workspace: Path,
        *args: str,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        timeout: float = STAGE_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            list(args),
            cwd=workspace,
            env=subprocess_env(self.site_cache, env),
            capture_output=True,
            text=True,
            timeout=timeout,
            # A process group of its own: a fault-injection kill takes down dvc and its stage only.
            start_new_session=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout[-6000:]}\nstderr:\n{result.stderr[-6000:]}"
            )
        return result

    def dvc(self, workspace: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run(workspace, "dvc", *args, **kwargs)  # type: ignore[arg-type]

    def git(self, workspace: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(workspace, "git", *args, timeout=120)

    def commit(self, workspace: Path, message: str) -> None:
        self.git(workspace, "add", "-A")
        self.git(workspace, "commit", "-q", "--allow-empty", "-m", message)


def ran_stages(output: str) -> list[str]:
    """The stages `dvc repro` ran, in order, from its "Running stage '...'" lines."""
    return RUNNING.findall(output)


def make_workspace(runner: Runner, root: Path, overrides: Sequence[str] = ()) -> Path:
    """A git + DVC repository with the project's dvc.yaml and a tiny params.yaml, committed."""
    root.mkdir(parents=True)
    runner.git(root, "init", "-q")
    runner.dvc(root, "init", "-q")
    runner.dvc(root, "config", "core.analytics", "false")
    shutil.copy(PROJECT / "dvc.yaml", root / "dvc.yaml")
    write_params(root / "params.yaml", overrides=[*TINY, *overrides])
    # Work in progress and the tracking store are not versioned (outputs get their own .gitignore).
    (root / ".gitignore").write_text(".iris/\nmlflow.db\nmlartifacts/\n")
    runner.commit(root, "tiny campaign")
    return root


def copy_workspace(source: Path, target: Path) -> Path:
    """A copy (git, DVC cache, outputs, MLflow store) with modification times kept."""
    shutil.copytree(source, target, symlinks=True)
    return target


# ---------------------------------------------------------------------------------------------
# Comparing two workspaces bit for bit
# ---------------------------------------------------------------------------------------------


def store_parts(workspace: Path, iteration: int) -> list[tuple[np.ndarray, list[dict[str, np.ndarray]]]]:
    """For each store of manifest ``iteration``: its committed index and the arrays of each part."""
    from pipelines.storage import ZarrEpisodeDataset

    dataset = ZarrEpisodeDataset.from_manifest(str(Workspace(workspace).manifest(iteration)))
    stores = []
    for store in dataset.stores:
        parts = []
        for row in range(len(store.index)):
            part = store.read_part(row)
            parts.append({name: getattr(part, name) for name in ("obs", "act", "rew", "end", "trunc")})
        stores.append((np.asarray(store.index), parts))
    return stores


def assert_same_episodes(a: Path, b: Path, iteration: int) -> int:
    """The datasets of manifest ``iteration`` in workspaces ``a`` and ``b`` hold the same episodes,
    split into the same parts in the same stores, with equal arrays. Returns the episode count."""
    from pipelines.storage import ZarrEpisodeDataset, read_manifest

    ws_a, ws_b = Workspace(a), Workspace(b)
    assert read_manifest(str(ws_a.manifest(iteration))) == read_manifest(str(ws_b.manifest(iteration)))
    data_a = ZarrEpisodeDataset.from_manifest(str(ws_a.manifest(iteration)))
    data_b = ZarrEpisodeDataset.from_manifest(str(ws_b.manifest(iteration)))
    np.testing.assert_array_equal(data_a.episode_lengths(), data_b.episode_lengths())
    for episode in range(data_a.num_episodes):
        ep_a, ep_b = data_a.load_episode(episode), data_b.load_episode(episode)
        for name in ("obs", "act", "rew", "end", "trunc"):
            np.testing.assert_array_equal(
                getattr(ep_a, name), getattr(ep_b, name), err_msg=f"{episode} {name}"
            )
    stores_a, stores_b = store_parts(a, iteration), store_parts(b, iteration)
    assert len(stores_a) == len(stores_b)
    for (index_a, parts_a), (index_b, parts_b) in zip(stores_a, stores_b, strict=True):
        np.testing.assert_array_equal(index_a, index_b)
        for part_a, part_b in zip(parts_a, parts_b, strict=True):
            for name, value in part_a.items():
                np.testing.assert_array_equal(value, part_b[name], err_msg=name)
    return data_a.num_episodes


def assert_same_tensors(a: object, b: object, where: str = "") -> None:
    """Nested dicts/lists of tensors and plain values are equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"tensor differs at {where}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"keys differ at {where}"
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for n, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{n}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def load_checkpoint(workspace: Path, component: str, iteration: int) -> dict[str, object]:
    content: dict[str, object] = torch.load(
        Workspace(workspace).checkpoint(component, iteration), map_location="cpu", weights_only=True
    )
    return content


def assert_same_checkpoints(a: Path, b: Path, iteration: int) -> dict[str, int]:
    """Every tensor (weights, optimizer, sampler) and counter of the three checkpoints of
    ``iteration`` are equal. Returns the optimizer steps of each component."""
    steps = {}
    for component in COMPONENTS:
        ckpt_a, ckpt_b = load_checkpoint(a, component, iteration), load_checkpoint(b, component, iteration)
        assert_same_tensors(ckpt_a, ckpt_b, f"{component}@{iteration}")
        steps[component] = int(ckpt_a["steps"])  # type: ignore[call-overload]
    return steps


def assert_same_collector(a: Path, b: Path, iteration: int) -> None:
    """The collector states (episode bookkeeping, last observations, carried overshoot, generator)
    are equal. The live environments are pickled with hash-seed dependent layouts (their bytes
    differ between processes): the episodes they go on to produce compare them instead."""
    state_a = torch.load(Workspace(a).collector_state(iteration), weights_only=False)
    state_b = torch.load(Workspace(b).collector_state(iteration), weights_only=False)
    assert state_a["next_part"] == state_b["next_part"]
    collector_a, collector_b = state_a["collector"], state_b["collector"]
    assert (collector_a is None) == (collector_b is None)
    if collector_a is not None:
        assert collector_a.keys() == collector_b.keys()
        for key in collector_a:
            if key != "env":
                same = pickle.dumps(collector_a[key]) == pickle.dumps(collector_b[key])
                assert same, f"collector state {key} differs"


@dataclass(frozen=True)
class Campaign:
    workspace: Path
    output: str  # stdout + stderr of `dvc repro`
    stages: list[str]  # the stages it ran, in order


@dataclass(frozen=True)
class Campaigns:
    dvc: Campaign  # `dvc repro` of TINY (2 iterations)
    reference: Path  # run_campaign on TINY with common.epochs=3, in another workspace
