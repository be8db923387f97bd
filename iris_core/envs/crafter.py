"""Crafter as a Gymnasium environment (spec §7).

``crafter.Env(reward=True)`` speaks the old gym API (``reset() -> obs``, 4-tuple ``step``). This
adapter gives it the Gymnasium API with the paper's semantics:

- observations: 64×64 RGB uint8 ``(H, W, C)``; 17 discrete actions; reward +1 per first unlock of
  an achievement in an episode and ±0.1 per health point gained or lost;
- ``terminated`` is death (crafter's ``info["discount"] == 0``); ``truncated`` is the length limit,
  applied by a :class:`gymnasium.wrappers.TimeLimit` of ``EnvSpec.max_episode_steps`` (crafter's
  own limit is switched off so that the two cannot disagree);
- ``info["achievements"]`` holds crafter's 22 achievement counters, copied (crafter mutates its
  own dicts in place), so the achievements unlocked in an episode can be read off its last step;
- seeding: ``reset(seed=s)`` makes the sequence of episodes that follows a function of ``s`` alone
  (crafter derives each episode's world from ``hash((seed, episode_index))``).

One crafter detail breaks that reproducibility: the world keeps the creatures of each chunk in a
``set``, whose iteration order follows memory addresses, and the despawn rule picks a creature by
index from it. :class:`_OrderedChunksWorld` keeps them in insertion order instead, which is
deterministic and, since the original order is arbitrary, leaves the game's statistics unchanged.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import crafter
import gymnasium
import numpy as np
from crafter import engine
from gymnasium.wrappers import TimeLimit

NUM_ACTIONS = 17
ACHIEVEMENTS: tuple[str, ...] = tuple(crafter.constants.achievements)

_K = TypeVar("_K")


class _InsertionOrderedSet(Generic[_K]):
    """The subset of ``set`` that crafter uses on chunk contents, iterating in insertion order."""

    def __init__(self) -> None:
        self._items: dict[_K, None] = {}

    def add(self, item: _K) -> None:
        self._items[item] = None

    def remove(self, item: _K) -> None:
        del self._items[item]

    def discard(self, item: _K) -> None:
        self._items.pop(item, None)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[_K]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)


class _OrderedChunksWorld(engine.World):  # type: ignore[misc]
    """crafter's world with chunk contents kept in insertion order (see the module docstring)."""

    def reset(self, seed: int | None = None) -> None:
        super().reset(seed)
        self._chunks: collections.defaultdict[Any, _InsertionOrderedSet[Any]] = collections.defaultdict(
            _InsertionOrderedSet
        )


class CrafterEnv(gymnasium.Env[np.ndarray, np.int64]):
    """Gymnasium adapter around ``crafter.Env`` without a length limit (see :func:`make_crafter`)."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, size: int = 64) -> None:
        self._env = crafter.Env(
            area=(64, 64), view=(9, 9), size=(size, size), reward=True, length=None, seed=0
        )
        self._env._world.__class__ = _OrderedChunksWorld
        self.observation_space = gymnasium.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = gymnasium.spaces.Discrete(NUM_ACTIONS)
        self._seeded = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None or not self._seeded:
            # Without an explicit seed, the first episode's seed comes from gymnasium's np_random
            # (itself seeded from OS entropy), never from numpy's global generator.
            crafter_seed = seed if seed is not None else int(self.np_random.integers(2**31 - 1))
            self._env._seed = crafter_seed
            self._env._episode = 0
            self._seeded = True
        obs = self._env.reset()
        return obs, {"achievements": dict.fromkeys(ACHIEVEMENTS, 0)}

    def step(self, action: np.int64 | int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, _, info = self._env.step(int(action))
        terminated = info["discount"] == 0.0
        # A fresh dict of plain values: crafter reuses the objects it puts into ``info``.
        # The per-step semantic map is left out (analysis only, 4 KB a step).
        out_info = {
            "achievements": dict(info["achievements"]),
            "inventory": dict(info["inventory"]),
            "discount": float(info["discount"]),
        }
        return obs, float(reward), bool(terminated), False, out_info


def make_crafter(size: int = 64, max_episode_steps: int = 10_000) -> gymnasium.Env[np.ndarray, np.int64]:
    """``TimeLimit(Crafter, max_episode_steps)``: the reference's env (spec §7)."""
    return TimeLimit(CrafterEnv(size), max_episode_steps=max_episode_steps)


def unlocked_achievements(achievements: dict[str, int]) -> list[str]:
    """Names of the achievements with a positive counter, in crafter's order."""
    return [name for name in ACHIEVEMENTS if achievements.get(name, 0) > 0]
