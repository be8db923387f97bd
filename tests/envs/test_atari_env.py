"""Atari wrappers: order and semantics of docs/method.md §1, checked on fakes and on the real ALE."""

from __future__ import annotations

import pickle
from typing import Any

import gymnasium
import numpy as np
import pytest
from PIL import Image

from iris_core.config import EnvSpec
from iris_core.envs.atari import EpisodicLife, MaxAndSkip, make_atari, resize_bilinear
from iris_core.envs.factory import make_env

GAME = "BreakoutNoFrameskip-v4"


class FrameCounter(gymnasium.Env[np.ndarray, int]):
    """Raw frame t is filled with a per-frame pattern; reward t; ends after ``length`` frames."""

    def __init__(self, length: int = 100) -> None:
        self.observation_space = gymnasium.spaces.Box(0, 255, (4, 4, 3), np.uint8)
        self.action_space = gymnasium.spaces.Discrete(2)
        self.length = length
        self.t = 0

    @staticmethod
    def frame(t: int) -> np.ndarray:
        rng = np.random.default_rng(t)
        return rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        self.t = 0
        return self.frame(0), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return self.frame(self.t), float(self.t), self.t >= self.length, False, {}


def test_max_and_skip_pools_the_last_two_raw_frames_and_sums_rewards() -> None:
    env = MaxAndSkip(FrameCounter(), skip=4)
    env.reset()
    obs, rew, *_ = env.step(0)
    np.testing.assert_array_equal(obs, np.maximum(FrameCounter.frame(3), FrameCounter.frame(4)))
    assert rew == 1 + 2 + 3 + 4
    obs, rew, *_ = env.step(0)
    np.testing.assert_array_equal(obs, np.maximum(FrameCounter.frame(7), FrameCounter.frame(8)))
    assert rew == 5 + 6 + 7 + 8


def test_max_and_skip_stops_at_the_end_of_the_episode() -> None:
    env = MaxAndSkip(FrameCounter(length=6), skip=4)
    env.reset()
    env.step(0)
    _, rew, terminated, _, _ = env.step(0)
    assert terminated and rew == 5 + 6


def test_max_and_skip_on_real_frames() -> None:
    """On the ALE: the pooled frame equals the max of the last two resized raw frames."""
    raw = make_atari(GAME, max_episode_steps=1000, noop_max=0, frame_skip=1, done_on_life_loss=False)
    pooled = make_atari(GAME, max_episode_steps=1000, noop_max=0, frame_skip=4, done_on_life_loss=False)
    raw.reset(seed=3)
    pooled.reset(seed=3)
    pooling_mattered = False
    for action in [1, 1, 2, 3, 2, 1, 1, 1]:
        frames = [raw.step(action)[0] for _ in range(4)]
        obs = pooled.step(action)[0]
        np.testing.assert_array_equal(obs, np.maximum(frames[2], frames[3]))
        pooling_mattered |= not np.array_equal(obs, frames[3])
    assert pooling_mattered


@pytest.mark.parametrize("shape", [(210, 160, 3), (250, 160, 3), (100, 37, 3), (30, 20, 3), (64, 64, 3)])
def test_resize_equals_pillow_bilinear(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for _ in range(3):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = np.asarray(Image.fromarray(image).resize((64, 64), Image.BILINEAR))
        np.testing.assert_array_equal(resize_bilinear(image, 64, 64), expected)


def test_resize_equals_pillow_on_game_frames() -> None:
    env = gymnasium.make(GAME)
    frame, _ = env.reset(seed=0)
    for _ in range(50):
        frame = env.step(1)[0]
    expected = np.asarray(Image.fromarray(frame).resize((64, 64), Image.BILINEAR))
    np.testing.assert_array_equal(resize_bilinear(frame, 64, 64), expected)


def test_noop_reset_takes_1_to_30_raw_noops_in_training() -> None:
    counts = []
    env = make_env(EnvSpec(kind="atari", id=GAME, max_episode_steps=20_000, noop_max=30, frame_skip=4,
                           done_on_life_loss=False), seed=0)  # fmt: skip
    for seed in range(12):
        _, info = env.reset(seed=seed)
        # The raw emulator's own frame counter: the no-ops are the only frames since the reset.
        assert info["episode_frame_number"] == info["num_noops"]
        counts.append(info["num_noops"])
    assert all(1 <= c <= 30 for c in counts)
    assert len(set(counts)) > 3


def test_test_env_takes_exactly_one_noop() -> None:
    env = make_env(
        EnvSpec(kind="atari", id=GAME, max_episode_steps=108_000, noop_max=1, frame_skip=4), seed=0
    )
    for seed in range(5):
        _, info = env.reset(seed=seed)
        assert info["num_noops"] == 1 and info["episode_frame_number"] == 1


def _play_until_life_lost(env: gymnasium.Env, rng: np.random.Generator) -> tuple[bool, dict]:
    for _ in range(3000):
        _, _, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        if terminated or truncated:
            return terminated, info
    raise AssertionError("no life lost in 3000 steps")


def test_life_loss_ends_training_episodes_and_the_game_continues_with_one_noop() -> None:
    env = make_atari(GAME, max_episode_steps=20_000, noop_max=30, frame_skip=4, done_on_life_loss=True)
    _, info = env.reset(seed=1)
    lives = info["lives"]
    rng = np.random.default_rng(0)
    terminated, info = _play_until_life_lost(env, rng)
    assert terminated and info["lives"] == lives - 1
    frame_before = info["episode_frame_number"]
    _, info = env.reset()
    # Not a real reset: same game, same lives, exactly one (4-frame) no-op step later.
    assert info["lives"] == lives - 1
    assert info["episode_frame_number"] == frame_before + 4
    assert isinstance(env, EpisodicLife) and not env.game_over


def test_life_loss_does_not_end_test_episodes() -> None:
    env = make_atari(GAME, max_episode_steps=108_000, noop_max=1, frame_skip=4, done_on_life_loss=False)
    _, info = env.reset(seed=1)
    lives = info["lives"]
    rng = np.random.default_rng(0)
    for _ in range(3000):
        _, _, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        if info["lives"] < lives:
            assert not terminated and not truncated
            return
    raise AssertionError("no life lost in 3000 steps")


def test_time_limit_counts_raw_frames() -> None:
    env = make_atari(GAME, max_episode_steps=103, noop_max=1, frame_skip=4, done_on_life_loss=False)
    env.reset(seed=0)
    steps = 0
    while True:
        steps += 1
        _, _, terminated, truncated, info = env.step(0)  # no-ops never lose a life in Breakout
        if terminated or truncated:
            break
    assert truncated and not terminated
    assert info["episode_frame_number"] == 103  # 1 no-op + 102 action frames
    assert steps == 26  # ceil(102 / 4): the last agent step is cut short


def test_unknown_game_lists_the_valid_ids() -> None:
    with pytest.raises(ValueError, match="BreakoutNoFrameskip-v4") as error:
        make_atari("Breakout-v5")
    assert "PongNoFrameskip-v4" in str(error.value)
    with pytest.raises(ValueError, match="unknown Atari game"):
        make_atari("NotAGameNoFrameskip-v4")


def test_pickled_env_continues_exactly() -> None:
    env = make_atari(GAME, max_episode_steps=20_000, noop_max=30, frame_skip=4, done_on_life_loss=True)
    env.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(20):
        env.step(int(rng.integers(4)))
    copy = pickle.loads(pickle.dumps(env))
    for t in range(200):
        a, b = env.step(t % 4), copy.step(t % 4)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:4] == b[1:4]
        if a[2] or a[3]:
            np.testing.assert_array_equal(env.reset()[0], copy.reset()[0])
