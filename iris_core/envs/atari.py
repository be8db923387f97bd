"""Atari ``<Game>NoFrameskip-v4`` with the paper's wrappers, in the paper's order (docs/method.md §1).

From the inside out::

    gymnasium.make("<Game>NoFrameskip-v4")   raw frames: no frame skip, no sticky actions
    → ResizeObservation(64)                   RGB, Pillow-bilinear-equivalent
    → ClipRewardSign                          only if clip_reward (off in the paper)
    → TimeLimit(max_episode_steps)            counts RAW frames (train 20,000, test 108,000)
    → NoopReset(noop_max)                     1..noop_max raw no-ops (test: noop_max 1 = exactly one)
    → MaxAndSkip(frame_skip)                  repeat the action, sum rewards, max of the last two frames
    → EpisodicLife                            training only: a lost life ends the episode

Because the time limit and the no-ops sit inside max-and-skip they count and act on raw frames, and
max-pooling sees resized frames. The no-op count is drawn from the base env's ``np_random``, so
``reset(seed=...)`` makes it reproducible.
"""

from __future__ import annotations

from functools import cache
from typing import Any, SupportsFloat

import ale_py
import gymnasium
import numpy as np
from gymnasium.wrappers import TimeLimit

gymnasium.register_envs(ale_py)

NOOP = 0
_SUFFIX = "NoFrameskip-v4"

Obs = np.ndarray
Step = tuple[Obs, SupportsFloat, bool, bool, dict[str, Any]]


def valid_game_ids() -> list[str]:
    """Every ``<Game>NoFrameskip-v4`` id registered by ale-py."""
    return sorted(env_id for env_id in gymnasium.registry if env_id.endswith(_SUFFIX) and "/" not in env_id)


# ---------------------------------------------------------------------------------------------
# Resize: Pillow's BILINEAR resampling, written out so that iris_core needs no imaging library.
# ---------------------------------------------------------------------------------------------

_PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit images (32 - 8 - 2)


@cache
def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and fixed-point weights, both ``(out_size, K)``, of Pillow's antialiased
    bilinear filter along one axis (unused taps have weight 0).

    Pillow widens the triangle filter by the downscaling factor (so every source pixel
    contributes), normalises each output's weights in double precision, then rounds them to
    22-bit integers.
    """
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = 1.0 * filter_scale
    rows = []
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = np.array([max(0.0, 1.0 - abs((x - center + 0.5) / filter_scale)) for x in range(lo, hi)])
        total = taps.sum()
        if total != 0.0:
            taps = taps / total
        rows.append((lo, np.trunc(0.5 + taps * (1 << _PRECISION_BITS))))  # weights are >= 0
    num_taps = max(len(w) for _, w in rows)
    indices = np.zeros((out_size, num_taps), dtype=np.intp)
    weights = np.zeros((out_size, num_taps), dtype=np.int32)
    for i, (lo, w) in enumerate(rows):
        indices[i, : len(w)] = np.arange(lo, lo + len(w))
        weights[i, : len(w)] = w
    return indices, weights


def _resample_rows(image: np.ndarray, out_size: int) -> np.ndarray:
    """One Pillow pass along axis 0, in Pillow's 32-bit integer arithmetic: weighted sums plus a
    rounding half, shifted back and clipped to uint8."""
    indices, weights = _bilinear_taps(image.shape[0], out_size)
    x = image.astype(np.int32)
    acc = np.full((out_size, *image.shape[1:]), 1 << (_PRECISION_BITS - 1), dtype=np.int32)
    extra = (slice(None),) + (None,) * (image.ndim - 1)
    for k in range(indices.shape[1]):
        acc += x[indices[:, k]] * weights[:, k][extra]
    out: np.ndarray = np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)
    return out


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an ``(H, W, C)`` uint8 image exactly like ``PIL.Image.resize((width, height), BILINEAR)``.

    Two separable passes, each rounded to 8 bits. Pillow runs the horizontal pass first, except
    when the width grows while the height shrinks (checked against Pillow on both kinds of shape).
    """
    assert image.ndim == 3 and image.dtype == np.uint8, (image.shape, image.dtype)
    in_height, in_width = image.shape[:2]

    def horizontal(x: np.ndarray) -> np.ndarray:
        if in_width == width:
            return x
        return _resample_rows(x.transpose(1, 0, 2), width).transpose(1, 0, 2)

    def vertical(x: np.ndarray) -> np.ndarray:
        return x if in_height == height else _resample_rows(x, height)

    out = (
        horizontal(vertical(image))
        if width > in_width and height < in_height
        else vertical(horizontal(image))
    )
    return np.ascontiguousarray(out)


class ResizeObservation(gymnasium.ObservationWrapper[Obs, int, Obs]):
    def __init__(self, env: gymnasium.Env[Obs, int], size: int) -> None:
        super().__init__(env)
        self.size = size
        self.observation_space = gymnasium.spaces.Box(0, 255, (size, size, 3), np.uint8)

    def observation(self, observation: Obs) -> Obs:
        return resize_bilinear(observation, self.size, self.size)


class ClipRewardSign(gymnasium.RewardWrapper[Obs, int]):
    def reward(self, reward: SupportsFloat) -> float:
        return float(np.sign(float(reward)))


# ---------------------------------------------------------------------------------------------
# The classic Atari wrappers, with the reference's semantics
# ---------------------------------------------------------------------------------------------


class NoopReset(gymnasium.Wrapper[Obs, int, Obs, int]):
    """After a reset, take ``U{1..noop_max}`` raw no-op frames (a game that ends meanwhile restarts)."""

    def __init__(self, env: gymnasium.Env[Obs, int], noop_max: int) -> None:
        super().__init__(env)
        assert noop_max >= 1, noop_max
        meanings = env.unwrapped.get_action_meanings()  # type: ignore[attr-defined]
        assert meanings[NOOP] == "NOOP", meanings
        self.noop_max = noop_max

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        num_noops = int(self.unwrapped.np_random.integers(1, self.noop_max + 1))
        for _ in range(num_noops):
            obs, _, terminated, truncated, info = self.env.step(NOOP)
            if terminated or truncated:
                obs, info = self.env.reset()
        info["num_noops"] = num_noops
        return obs, info


class MaxAndSkip(gymnasium.Wrapper[Obs, int, Obs, int]):
    """Repeat the action ``skip`` raw frames, sum the rewards, return the pixel-wise max of the last
    two frames (removes the flicker of sprites drawn every other frame)."""

    def __init__(self, env: gymnasium.Env[Obs, int], skip: int) -> None:
        super().__init__(env)
        assert skip >= 1, skip
        self.skip = skip

    def step(self, action: int) -> Step:
        total_reward = 0.0
        previous: Obs | None = None
        obs: Obs | None = None
        terminated = truncated = False
        info: dict[str, Any] = {}
        for _ in range(self.skip):
            previous = obs
            obs, reward, terminated, truncated, info = self.env.step(action)
            total_reward += float(reward)
            if terminated or truncated:
                # The frame after a final step is never stored, so the pooled pair only has to be
                # the last two frames actually produced.
                break
        assert obs is not None
        max_frame = obs if previous is None else np.maximum(previous, obs)
        return max_frame, total_reward, terminated, truncated, info


class EpisodicLife(gymnasium.Wrapper[Obs, int, Obs, int]):
    """A lost life ends the episode (``terminated``); the game itself restarts only at game over
    (or time limit), otherwise the next episode continues it after one no-op step."""

    def __init__(self, env: gymnasium.Env[Obs, int]) -> None:
        super().__init__(env)
        self.lives = 0
        self.game_over = True

    def _ale_lives(self) -> int:
        return int(self.unwrapped.ale.lives())  # type: ignore[attr-defined]

    def step(self, action: int) -> Step:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self._ale_lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        if self.game_over or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            obs, _, terminated, truncated, info = self.env.step(NOOP)
            if terminated or truncated:  # the no-op itself ended the game: start a new one
                obs, info = self.env.reset()
        self.game_over = False
        self.lives = self._ale_lives()
        return obs, info


class EmulatorSnapshot(gymnasium.Wrapper[Obs, int, Obs, int]):
    """Makes the wrapped ale-py env picklable *with its state*.

    ale-py's ``AtariEnv`` pickles only its constructor arguments (unpickling loads a fresh game);
    this wrapper adds the emulator state (RNG included) and the env's ``np_random``, and puts them
    back after unpickling, so a pickled wrapper stack continues exactly where it stopped.
    """

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        base = self.unwrapped
        state["_ale_state"] = base.clone_state(include_rng=True)  # type: ignore[attr-defined]
        state["_np_random_state"] = base.np_random.bit_generator.state
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        ale_state = state.pop("_ale_state")
        np_random_state = state.pop("_np_random_state")
        self.__dict__.update(state)
        base = self.unwrapped
        base.restore_state(ale_state)  # type: ignore[attr-defined]
        base.np_random.bit_generator.state = np_random_state


def make_atari(
    game_id: str,
    *,
    size: int = 64,
    max_episode_steps: int = 20_000,
    noop_max: int = 30,
    frame_skip: int = 4,
    done_on_life_loss: bool = True,
    clip_reward: bool = False,
) -> gymnasium.Env[Obs, int]:
    """The reference's ``make_atari`` (docs/method.md §1); the wrappers' order is part of the method."""
    if game_id not in gymnasium.registry or not game_id.endswith(_SUFFIX):
        valid = valid_game_ids()
        raise ValueError(
            f"unknown Atari game id {game_id!r}: the paper uses '<Game>{_SUFFIX}' "
            f"(no frame skip, no sticky actions). Valid ids ({len(valid)}): {', '.join(valid)}"
        )
    env: gymnasium.Env[Obs, int] = gymnasium.make(game_id, max_episode_steps=None)
    if env.unwrapped.ale.getFloat("repeat_action_probability") != 0.0:  # type: ignore[attr-defined]
        raise ValueError(f"{game_id} has sticky actions; the paper's games have none")
    env = EmulatorSnapshot(env)
    env = ResizeObservation(env, size)
    if clip_reward:
        env = ClipRewardSign(env)
    env = TimeLimit(env, max_episode_steps=max_episode_steps)
    if noop_max > 0:
        env = NoopReset(env, noop_max=noop_max)
    if frame_skip > 1:
        env = MaxAndSkip(env, skip=frame_skip)
    if done_on_life_loss:
        env = EpisodicLife(env)
    return env
