"""Deterministic episodes for the storage tests (also imported by the crash-test writer process)."""

from __future__ import annotations

import numpy as np

from iris_core.data.structures import Episode
from pipelines.storage.tables import CRAFTER_ACHIEVEMENTS


def make_episode(
    length: int, seed: int, *, finished: bool = True, truncated: bool = False, achievements: bool = False
) -> Episode:
    """Random frames (incompressible, so writes take real time) and fields that differ per seed."""
    rng = np.random.default_rng(seed)
    end = np.zeros(length, np.uint8)
    trunc = np.zeros(length, np.uint8)
    end[-1] = finished
    trunc[-1] = finished and truncated
    info: dict[str, object] = {}
    if achievements:
        info["achievements"] = {name: int(rng.integers(0, 3)) for name in CRAFTER_ACHIEVEMENTS}
    return Episode(
        obs=rng.integers(0, 256, (length, 3, 64, 64), dtype=np.uint8),
        act=rng.integers(0, 17, length),
        rew=rng.normal(size=length).astype(np.float32),
        end=end,
        trunc=trunc,
        info=info,
    )


def crash_test_episode(episode_id: int) -> Episode:
    """Episode ``episode_id`` of the crash test: its length and content follow from its id."""
    length = int(np.random.default_rng(10_000 + episode_id).integers(1, 120))
    return make_episode(length, episode_id, finished=episode_id % 3 != 0)


def cut(episode: Episode, start: int, stop: int) -> Episode:
    return Episode(
        episode.obs[start:stop],
        episode.act[start:stop],
        episode.rew[start:stop],
        episode.end[start:stop],
        episode.trunc[start:stop],
        dict(episode.info),
    )


def assert_same_episode(a: Episode, b: Episode) -> None:
    for name in ("obs", "act", "rew", "end", "trunc"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, (name, x.shape, y.shape)
        assert np.array_equal(x, y), name
