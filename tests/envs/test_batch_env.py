"""BatchEnv: reset together, done envs repeat their final transition, steps of running envs only."""

from __future__ import annotations

from functools import partial
from typing import Any

import gymnasium
import numpy as np
import pytest

from iris_core.config import EnvSpec
from iris_core.envs.factory import BatchEnv, _EnvFn, make_batch_env


class Countdown(gymnasium.Env[np.ndarray, int]):
    """Episode k of this env lasts ``lengths[k % len(lengths)]`` steps; obs encodes (episode, t)."""

    def __init__(self, lengths: list[int]) -> None:
        self.observation_space = gymnasium.spaces.Box(0, 255, (2, 2, 3), np.uint8)
        self.action_space = gymnasium.spaces.Discrete(3)
        self.lengths = lengths
        self.episode = -1
        self.t = 0
        self.steps_taken = 0

    def obs(self) -> np.ndarray:
        out = np.zeros((2, 2, 3), dtype=np.uint8)
        out[..., 0], out[..., 1] = self.episode % 256, self.t
        return out

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        self.episode += 1
        self.t = 0
        return self.obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        self.steps_taken += 1
        done = self.t >= self.lengths[self.episode % len(self.lengths)]
        return self.obs(), float(self.t), done, False, {"t": self.t}


def test_done_envs_wait_and_repeat_their_final_transition() -> None:
    envs = [Countdown([2]), Countdown([4])]
    batch = BatchEnv([lambda e=e: e for e in envs])
    obs, _ = batch.reset()
    assert obs.shape == (2, 3, 2, 2)  # channel-first
    running_before = []
    for _ in range(4):
        step = batch.step(np.zeros(2, dtype=np.int64))
        running_before.append(step.was_running.tolist())
    assert running_before == [[True, True], [True, True], [False, True], [False, True]]
    assert envs[0].steps_taken == 2 and envs[1].steps_taken == 4  # a done env is not stepped
    # Env 0 still reports its final transition.
    assert step.obs[0, 1, 0, 0] == 2 and step.rew[0] == 2.0 and step.terminated[0]
    assert batch.all_done
    obs, _ = batch.reset()
    assert obs[:, 0, 0, 0].tolist() == [1, 1]  # both envs started their second episode together


def test_no_env_resets_before_all_are_done() -> None:
    envs = [Countdown([1]), Countdown([3])]
    batch = BatchEnv([lambda e=e: e for e in envs])
    batch.reset()
    batch.step(np.zeros(2, dtype=np.int64))
    assert batch.running.tolist() == [False, True] and not batch.all_done
    batch.step(np.zeros(2, dtype=np.int64))
    assert envs[0].episode == 0  # still waiting, not reset


def test_reset_mask_leaves_envs_idle() -> None:
    envs = [Countdown([2]), Countdown([2]), Countdown([2])]
    batch = BatchEnv([lambda e=e: e for e in envs])
    batch.reset(np.array([True, False, True]))
    step = batch.step(np.zeros(3, dtype=np.int64))
    assert step.was_running.tolist() == [True, False, True]
    assert envs[1].steps_taken == 0 and envs[1].episode == -1


def _roll(batch: BatchEnv, actions: np.ndarray) -> list[np.ndarray]:
    out = []
    for a in actions:
        if batch.all_done:
            out.append(batch.reset()[0])
        out.append(batch.step(a).obs)
    return out


@pytest.mark.slow
def test_worker_processes_match_in_process_envs() -> None:
    spec = EnvSpec(max_episode_steps=30)
    actions = np.random.default_rng(0).integers(17, size=(70, 3))
    local = make_batch_env(spec, 3, seed=11)
    local.reset()
    workers = BatchEnv([_EnvFn(spec, 11 + i) for i in range(3)], num_workers=2)
    try:
        workers.reset()
        for a, b in zip(_roll(local, actions), _roll(workers, actions), strict=True):
            np.testing.assert_array_equal(a, b)
        # Checkpointing through the workers: states taken out continue identically in-process.
        state = workers.env_states()
        copy = make_batch_env(spec, 3, seed=99)
        copy.load_env_states(state)
        for a, b in zip(_roll(workers, actions[:20]), _roll(copy, actions[:20]), strict=True):
            np.testing.assert_array_equal(a, b)
    finally:
        workers.close()


def test_this_process_and_a_worker_share_the_envs() -> None:
    """``processes=2``: this process steps one group while a worker steps the other; the frames
    are those of stepping everything here, and checkpoints move between the two setups."""
    spec = EnvSpec(max_episode_steps=30)
    actions = np.random.default_rng(2).integers(17, size=(70, 5))
    local = make_batch_env(spec, 5, seed=3)
    shared = make_batch_env(spec, 5, seed=3, processes=2)
    try:
        assert local.num_worker_processes == 0 and shared.num_worker_processes == 1
        local.reset()
        shared.reset()
        for a, b in zip(_roll(local, actions), _roll(shared, actions), strict=True):
            np.testing.assert_array_equal(a, b)
        local.load_env_states(shared.env_states())
        for a, b in zip(_roll(local, actions[:25]), _roll(shared, actions[:25]), strict=True):
            np.testing.assert_array_equal(a, b)
        shared.load_env_states(local.env_states())
        for a, b in zip(_roll(local, actions[25:]), _roll(shared, actions[25:]), strict=True):
            np.testing.assert_array_equal(a, b)
    finally:
        shared.close()
        local.close()


class FailingCountdown(Countdown):
    """A :class:`Countdown` whose ``fail_at``-th step raises."""

    def __init__(self, lengths: list[int], fail_at: int) -> None:
        super().__init__(lengths)
        self.fail_at = fail_at

    def step(self, action: int) -> Any:
        if self.steps_taken + 1 == self.fail_at:
            raise ValueError("boom: this env broke")
        return super().step(action)


@pytest.mark.parametrize("where", ["this process", "worker"])
def test_an_env_error_is_raised_and_leaves_no_stale_reply(where: str) -> None:
    """Env 0 runs here, env 1 in the worker. Whichever fails, the error comes out (a worker's
    with its traceback), every reply is collected, and the batch refuses further use rather than
    hand out the envs' results out of step."""
    fns = [partial(Countdown, [50]), partial(Countdown, [50])]
    fns[0 if where == "this process" else 1] = partial(FailingCountdown, [50], 3)
    batch = BatchEnv(fns, num_workers=1, in_process_group=True)
    try:
        assert batch.num_worker_processes == 1
        batch.reset()
        for _ in range(2):
            batch.step(np.zeros(2, dtype=np.int64))
        expected = ValueError if where == "this process" else RuntimeError
        with pytest.raises(expected, match="boom: this env broke") as error:
            batch.step(np.zeros(2, dtype=np.int64))
        if where == "worker":
            assert "Traceback" in str(error.value) and "raise ValueError" in str(error.value)
        with pytest.raises(RuntimeError, match=r"unusable after an earlier error.*boom"):
            batch.step(np.zeros(2, dtype=np.int64))
        with pytest.raises(RuntimeError, match="unusable"):
            batch.env_states()
    finally:
        batch.close()


def test_env_states_round_trip() -> None:
    spec = EnvSpec(max_episode_steps=25)
    actions = np.random.default_rng(1).integers(17, size=(40, 2))
    a = make_batch_env(spec, 2, seed=0)
    a.reset()
    _roll(a, actions[:10])
    b = make_batch_env(spec, 2, seed=5)
    b.load_env_states(a.env_states())
    for x, y in zip(_roll(a, actions[10:]), _roll(b, actions[10:]), strict=True):
        np.testing.assert_array_equal(x, y)
