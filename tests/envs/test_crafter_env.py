"""Crafter adapter: API, achievements, termination vs. truncation, seeding (docs/method.md §1)."""

from __future__ import annotations

import pickle

import crafter
import numpy as np
import torch

from iris_core.config import EnvSpec
from iris_core.data.structures import Episode
from iris_core.envs.crafter import ACHIEVEMENTS, NUM_ACTIONS, CrafterEnv, make_crafter
from iris_core.envs.factory import BatchEnv, make_env
from iris_core.training.collector import Collector

DO = crafter.constants.actions.index("do")


def put_tree_in_front(env: CrafterEnv) -> None:
    world, player = env._env._world, env._env._player
    target = tuple(player.pos + player.facing)
    obj = world[target][1]
    if obj is not None:
        world.remove(obj)
    world[target] = "tree"


def test_spaces_and_first_step() -> None:
    env = make_crafter()
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert env.action_space.n == NUM_ACTIONS == 17
    assert set(info["achievements"]) == set(ACHIEVEMENTS) and len(ACHIEVEMENTS) == 22
    obs, rew, terminated, truncated, info = env.step(0)
    assert obs.shape == (64, 64, 3) and isinstance(rew, float)
    assert not terminated and not truncated
    assert set(info["achievements"]) == set(ACHIEVEMENTS)


def test_collecting_wood_is_recorded_and_info_is_a_copy() -> None:
    env = make_crafter()
    env.reset(seed=0)
    base = env.unwrapped
    assert isinstance(base, CrafterEnv)
    put_tree_in_front(base)
    _, rew, _, _, info = env.step(DO)
    assert info["achievements"]["collect_wood"] == 1
    assert rew >= 1.0  # +1 for the first unlock
    # Later steps must not change what an earlier step reported (crafter reuses its dicts).
    put_tree_in_front(base)
    env.step(DO)
    assert info["achievements"]["collect_wood"] == 1
    assert base._env._player.achievements["collect_wood"] == 2


def test_death_terminates_and_is_not_a_truncation() -> None:
    env = make_crafter()
    env.reset(seed=0)
    env.unwrapped._env._player.health = 0
    _, _, terminated, truncated, info = env.step(0)
    assert terminated and not truncated and info["discount"] == 0.0


def test_seed_makes_episodes_reproducible() -> None:
    def rollout(seed: int) -> list[np.ndarray]:
        env = make_env(EnvSpec(), seed=seed)
        frames = [env.reset()[0]]
        for t in range(150):
            obs, _, terminated, truncated, _ = env.step(t % NUM_ACTIONS)
            frames.append(obs)
            if terminated or truncated:
                frames.append(env.reset()[0])
        frames.append(env.reset()[0])  # the second episode's world is seeded too
        return frames

    a, b, c = rollout(7), rollout(7), rollout(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_pickled_env_continues_exactly() -> None:
    """Crafter picks creatures to despawn from per-chunk sets; the adapter keeps them ordered."""
    env = make_crafter()
    env.reset(seed=3)
    for t in range(50):
        env.step(t % NUM_ACTIONS)
    copy = pickle.loads(pickle.dumps(env))
    for t in range(300):
        a, b = env.step(t % 5), copy.step(t % 5)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:4] == b[1:4]
        if a[2] or a[3]:
            np.testing.assert_array_equal(env.reset()[0], copy.reset()[0])


class RecordingSink:
    def __init__(self) -> None:
        self.parts: list[tuple[int, int, Episode, bool]] = []

    def write(self, episode_id: int, part: Episode, *, start: int, finished: bool) -> None:
        self.parts.append((episode_id, start, part, finished))


class TreeFacingPolicy:
    """Always 'do', with a tree put in front of the player first (drives collect_wood)."""

    def __init__(self, envs: list[CrafterEnv]) -> None:
        self.envs = envs

    def reset(self, n: int) -> None:
        pass

    def burn_in(self, obs: torch.Tensor) -> None:
        pass

    def act(
        self, obs: torch.Tensor, should_sample: bool, temperature: float, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        for env in self.envs:
            put_tree_in_front(env)
        return torch.full((obs.shape[0],), DO, dtype=torch.long)


def test_time_limit_is_stored_as_end_and_trunc_with_achievements() -> None:
    spec = EnvSpec(max_episode_steps=12)
    envs = [make_env(spec, seed=i) for i in range(2)]
    sink = RecordingSink()
    collector = Collector(BatchEnv([lambda e=e: e for e in envs]), sink, burn_in_length=0, seed=0)
    policy = TreeFacingPolicy([e.unwrapped for e in envs])  # type: ignore[misc]
    result = collector.collect(policy, 24, epsilon=0.0)
    finished = [(i, p) for i, _, p, f in sink.parts if f]
    assert len(finished) == 2 and len(result.episodes) == 2
    for _, part in finished:
        assert len(part) == 12
        assert part.end.tolist() == [0] * 11 + [1] and part.trunc.tolist() == [0] * 11 + [1]
        assert part.info["achievements"]["collect_wood"] >= 1  # type: ignore[index]
    for metrics in result.episodes:
        assert metrics.truncated and metrics.length == 12
        assert metrics.achievements is not None and metrics.achievements["collect_wood"] >= 1


def test_fast_env_is_pixel_identical_to_crafter() -> None:
    """Fast views and world generation: same frames, rewards and ends as crafter's own code,
    through day, night, sleep and several resets (which also checks the random generator)."""
    fast, slow = make_crafter(fast=True), make_crafter(fast=False)
    np.testing.assert_array_equal(fast.reset(seed=1)[0], slow.reset(seed=1)[0])
    rng = np.random.default_rng(0)
    resets = 0
    for t in range(700):
        if t % 97 == 5:
            for env in (fast, slow):
                env.unwrapped._env._player.sleeping = True
        action = int(rng.integers(NUM_ACTIONS))
        a, b = fast.step(action), slow.step(action)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:4] == b[1:4]
        if a[2] or a[3]:
            resets += 1
            np.testing.assert_array_equal(fast.reset()[0], slow.reset()[0])
    assert resets >= 2


def test_the_fast_path_is_a_config_switch() -> None:
    """``env.train.fast=false`` runs crafter's own rendering and world generation; both give the
    same first frame for a seed."""
    frames = []
    for fast in (True, False):
        env = make_env(EnvSpec(fast=fast), seed=3)
        crafter_env = env.unwrapped
        assert isinstance(crafter_env, CrafterEnv)
        assert crafter_env._fast is fast
        assert fast or not crafter_env._fast_worldgen
        frames.append(env.reset()[0])
    np.testing.assert_array_equal(frames[0], frames[1])


def test_vectorised_world_generation_equals_crafters() -> None:
    from crafter import constants, engine, objects, worldgen

    from iris_core.envs import crafter_worldgen

    if not crafter_worldgen.available():
        return  # without numba the adapter keeps crafter's generator
    for seed in range(6):
        worlds = []
        for generate in (worldgen.generate_world, crafter_worldgen.generate_world):
            world = engine.World((64, 64), constants.materials, (12, 12))
            world.reset(seed=seed)
            player = objects.Player(world, (32, 32))
            world.add(player)
            generate(world, player)
            worlds.append(world)
        a, b = worlds
        np.testing.assert_array_equal(a._mat_map, b._mat_map)
        assert [(type(o), tuple(o.pos)) for o in a.objects] == [(type(o), tuple(o.pos)) for o in b.objects]
        assert a.random.uniform() == b.random.uniform()  # the generator advanced by the same draws


def test_world_generation_leaves_torch_threads_alone() -> None:
    """numba's parallel noise runs on its workqueue layer, not a second OpenMP pool that
    would halve the speed of torch's kernels (the policy) in the collecting process."""
    from iris_core.envs import crafter_worldgen

    if not crafter_worldgen.available():
        return
    import numba

    make_crafter(fast=True).reset(seed=0)
    assert numba.threading_layer() == "workqueue"


def test_desaturation_equals_pillow() -> None:
    from PIL import Image, ImageEnhance

    from iris_core.envs.crafter import _desaturate

    rng = np.random.default_rng(0)
    for factor in (0.4, 0.0):
        for _ in range(50):
            image = rng.integers(0, 256, (63, 49, 3), dtype=np.uint8)
            expected = np.array(ImageEnhance.Color(Image.fromarray(image)).enhance(factor))
            np.testing.assert_array_equal(_desaturate(image, factor), expected)
