"""Collector semantics of docs/method.md §4 on a deterministic fake environment."""

from __future__ import annotations

import pickle
from collections import defaultdict
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch

from iris_core.config import TrainCollectionConfig
from iris_core.data.structures import Episode
from iris_core.envs.factory import BatchEnv
from iris_core.training.collector import Collector, InferencePolicy, collect_test_episodes

NUM_ACTIONS = 17


class Walk(gymnasium.Env[np.ndarray, int]):
    """Episode k lasts ``lengths[k % len]`` steps; the frame encodes (env, episode, t, last action)."""

    def __init__(self, index: int, lengths: list[int]) -> None:
        self.observation_space = gymnasium.spaces.Box(0, 255, (3, 3, 3), np.uint8)
        self.action_space = gymnasium.spaces.Discrete(NUM_ACTIONS)
        self.index, self.lengths = index, lengths
        self.episode, self.t, self.last_action, self.steps_taken = -1, 0, 0, 0

    def obs(self) -> np.ndarray:
        out = np.zeros((3, 3, 3), dtype=np.uint8)
        out[0], out[1], out[2] = self.index, self.episode % 256, self.t % 256
        out[2, 0, 0] = self.last_action
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
        self.last_action = int(action)
        length = self.lengths[self.episode % len(self.lengths)]
        return self.obs(), float(action), self.t >= length, False, {}


def walk_batch(lengths: list[list[int]]) -> tuple[BatchEnv, list[Walk]]:
    envs = [Walk(i, ls) for i, ls in enumerate(lengths)]
    return BatchEnv([lambda e=e: e for e in envs]), envs


class Sink:
    def __init__(self) -> None:
        self.parts: list[tuple[int, int, Episode, bool]] = []

    def write(self, episode_id: int, part: Episode, *, start: int, finished: bool) -> None:
        self.parts.append((episode_id, start, part, finished))

    def episodes(self) -> dict[int, tuple[Episode, bool]]:
        """Parts concatenated per episode id (checking that starts are contiguous)."""
        grouped: dict[int, list[tuple[int, Episode, bool]]] = defaultdict(list)
        for episode_id, start, part, finished in self.parts:
            grouped[episode_id].append((start, part, finished))
        out = {}
        for episode_id, parts in grouped.items():
            position = 0
            for start, part, _ in parts:
                assert start == position and len(part) > 0
                position += len(part)
            assert all(not f for _, _, f in parts[:-1])
            out[episode_id] = (
                Episode(
                    *(
                        np.concatenate([getattr(p, name) for _, p, _ in parts])
                        for name in ("obs", "act", "rew", "end", "trunc")
                    )
                ),
                parts[-1][2],
            )
        return out


class SpyPolicy:
    """Always ``action``; records every call."""

    def __init__(self, action: int = 0) -> None:
        self.action = action
        self.calls: list[tuple[str, Any]] = []
        self.acting: list[list[int]] = []  # the envs asked for an action, per call

    def reset(self, n: int) -> None:
        self.calls.append(("reset", n))

    def burn_in(self, obs: torch.Tensor) -> None:
        self.calls.append(("burn_in", obs.clone()))

    def act(
        self, obs: torch.Tensor, should_sample: bool, temperature: float, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.calls.append(("act", (should_sample, temperature)))
        self.acting.append(list(range(obs.shape[0])) if rows is None else rows.tolist())
        assert rows is None or len(rows) == obs.shape[0]
        return torch.full((obs.shape[0],), self.action, dtype=torch.long)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def test_epoch_one_is_random_without_network() -> None:
    env, _ = walk_batch([[1000]] * 4)
    sink = Sink()
    collector = Collector(env, sink, burn_in_length=5, seed=0)
    policy = SpyPolicy()
    config = TrainCollectionConfig(num_envs=4, num_steps_first_epoch=200, num_steps=10, epsilon=0.0)
    result = collector.collect_epoch(policy, 1, config)
    assert result.num_steps == 200
    assert policy.calls == []  # epsilon forced to 1: no reset, burn-in or forward
    actions = np.concatenate([p.act for _, _, p, _ in sink.parts])
    assert len(np.unique(actions)) == NUM_ACTIONS
    # Epoch 2 uses the policy (epsilon 0 here: every action is the policy's).
    sink.parts.clear()
    collector.collect_epoch(policy, 2, config)
    assert "act" in policy.names()
    assert all((p.act == 0).all() for _, _, p, _ in sink.parts)


def test_only_running_envs_ask_the_policy() -> None:
    """Envs that finished and wait for the others' reset are not run through the policy."""
    env, _ = walk_batch([[2], [5], [3]])
    collector = Collector(env, Sink(), burn_in_length=0, seed=0)
    policy = SpyPolicy(action=1)
    result = collector.collect(policy, 10, epsilon=0.0)
    assert result.num_steps == 10  # 2 + 5 + 3 steps of the first round
    assert policy.acting == [[0, 1, 2], [0, 1, 2], [1, 2], [1], [1]]


def test_epsilon_is_batch_wide() -> None:
    env, _ = walk_batch([[10_000]] * 8)
    sink = Sink()
    collector = Collector(env, sink, burn_in_length=0, seed=1)
    collector.collect(SpyPolicy(action=0), 8 * 400, epsilon=0.3)
    actions = np.stack([p.act for _, _, p, _ in sink.parts])  # (envs, time): all envs step together
    random_steps = 0
    for vector in actions.T:
        if (vector == 0).all():
            continue
        random_steps += 1
        # A random vector is random in every env: a per-env epsilon would leave mostly zeros.
        assert (vector == 0).sum() <= 3, vector
    assert 0.22 < random_steps / actions.shape[1] < 0.38


def test_sampling_settings_reach_the_policy() -> None:
    env, _ = walk_batch([[50]] * 2)
    policy = SpyPolicy()
    Collector(env, None, burn_in_length=0, seed=0).collect(
        policy, 4, epsilon=0.0, should_sample=True, temperature=0.5
    )
    assert {args for name, args in policy.calls if name == "act"} == {(True, 0.5)}


def test_burn_in_zero_frames_when_fresh_then_stored_frames() -> None:
    env, _ = walk_batch([[30], [30], [30]])
    sink = Sink()
    collector = Collector(env, sink, burn_in_length=5, seed=0)
    policy = SpyPolicy()
    collector.collect(policy, 3 * 3, epsilon=0.0)  # 3 steps per env: shorter than the burn-in
    assert policy.names()[:2] == ["reset", "burn_in"]
    first = policy.calls[1][1]
    assert first.shape == (3, 5, 3, 3, 3) and (first == 0).all()

    policy.calls.clear()
    collector.collect(policy, 3 * 4, epsilon=0.0)  # now 7 steps stored per env
    burn_in = policy.calls[1][1]
    stored = sink.episodes()
    assert all(len(stored[i][0]) == 7 for i in range(3))
    # The second call burned in on the first call's 3 frames, left-padded with 2 zero frames.
    first_parts = {eid: p.obs for eid, start, p, _ in sink.parts if start == 0}
    for i in range(3):
        expected = np.concatenate([np.zeros((2, 3, 3, 3), np.uint8), first_parts[i]])
        torch.testing.assert_close(burn_in[i], torch.from_numpy(expected).float() / 255)

    policy.calls.clear()
    collector.collect(policy, 3, epsilon=0.0)
    burn_in = policy.calls[1][1]
    for i in range(3):
        torch.testing.assert_close(burn_in[i], torch.from_numpy(stored[i][0].obs[-5:]).float() / 255)


def test_envs_reset_mid_call_get_a_zeroed_state_only() -> None:
    env, _ = walk_batch([[2], [3]])
    policy = SpyPolicy()
    Collector(env, None, burn_in_length=5, seed=0).collect(policy, 10, epsilon=0.0)
    names = policy.names()
    assert names.count("burn_in") == 1 and names[:2] == ["reset", "burn_in"]
    # Every batch reset (after 3 steps) is followed by policy.reset(2) and no burn-in.
    assert names[2:] == ["act", "act", "act", "reset"] * 2, names
    assert all(n == 2 for name, n in policy.calls if name == "reset")


def test_steps_count_running_envs_and_the_overshoot_carries_over() -> None:
    env, envs = walk_batch([[3], [10], [10], [10]])
    collector = Collector(env, None, burn_in_length=0, seed=0)
    first = collector.collect(None, 10, epsilon=1.0)
    assert first.num_steps == 12  # 3 batch steps of 4 running envs: 2 over
    second = collector.collect(None, 10, epsilon=1.0)
    # 10 - 2 = 8 wanted; env 0 is done, so each batch step counts 3.
    assert second.num_steps == 9
    assert sum(e.steps_taken for e in envs) == 12 + 9
    third = collector.collect(None, 10, epsilon=1.0)  # 1 over from the last call
    assert third.num_steps == 9


def _collect_in_calls(calls: list[int], lengths: list[list[int]], seed: int = 3) -> Sink:
    env, _ = walk_batch(lengths)
    sink = Sink()
    collector = Collector(env, sink, burn_in_length=2, seed=seed)
    for n in calls:
        collector.collect(None, n, epsilon=1.0)
    return sink


def test_unfinished_episodes_continue_across_calls_with_the_same_id() -> None:
    lengths = [[17, 5], [9, 30], [40]]
    split = _collect_in_calls([20, 20, 20, 20, 20], lengths).episodes()
    whole = _collect_in_calls([100], lengths).episodes()
    finished_split = {i: e for i, (e, f) in split.items() if f}
    finished_whole = {i: e for i, (e, f) in whole.items() if f}
    assert finished_split.keys() == finished_whole.keys() and len(finished_split) >= 3
    for i, episode in finished_split.items():
        other = finished_whole[i]
        for name in ("obs", "act", "rew", "end", "trunc"):
            np.testing.assert_array_equal(getattr(episode, name), getattr(other, name))
        assert episode.end[-1] == 1 and episode.end[:-1].sum() == 0
        # One env, one episode: the frames say which env and episode they come from.
        # (Frames are stored channel-first: the env's rows are axis 2.)
        assert len(np.unique(episode.obs[:, :, 0])) == 1 and len(np.unique(episode.obs[:, :, 1])) == 1
        np.testing.assert_array_equal(episode.obs[:, 1, 2, 1], np.arange(len(episode)) % 256)
        # Each frame's action is the one recorded in the next frame by the env.
        np.testing.assert_array_equal(episode.obs[1:, 0, 2, 0], episode.act[:-1])
    parts_per_episode = defaultdict(int)
    for episode_id, *_ in _collect_in_calls([20, 20, 20, 20, 20], lengths).parts:
        parts_per_episode[episode_id] += 1
    assert max(parts_per_episode.values()) > 1


def test_state_dict_resumes_exactly() -> None:
    lengths = [[13, 7], [21], [9]]
    env_a, _ = walk_batch(lengths)
    sink_a = Sink()
    a = Collector(env_a, sink_a, burn_in_length=3, seed=4)
    policy = SpyPolicy(action=2)
    a.collect(None, 25, epsilon=1.0)
    a.collect(policy, 25, epsilon=0.5)
    state = pickle.loads(pickle.dumps(a.state_dict()))

    env_b, _ = walk_batch([[1]] * 3)  # other envs: everything comes from the state
    sink_b = Sink()
    b = Collector(env_b, sink_b, burn_in_length=3, seed=99)
    b.load_state_dict(state)
    del sink_a.parts[:]
    policy_a, policy_b = SpyPolicy(action=2), SpyPolicy(action=2)
    result_a = a.collect(policy_a, 40, epsilon=0.5)
    result_b = b.collect(policy_b, 40, epsilon=0.5)
    assert result_a.num_steps == result_b.num_steps
    assert len(sink_a.parts) == len(sink_b.parts) > 0
    for (ia, sa, pa, fa), (ib, sb, pb, fb) in zip(sink_a.parts, sink_b.parts, strict=True):
        assert (ia, sa, fa) == (ib, sb, fb)
        np.testing.assert_array_equal(pa.obs, pb.obs)
        np.testing.assert_array_equal(pa.act, pb.act)
    torch.testing.assert_close(policy_a.calls[1][1], policy_b.calls[1][1])  # same burn-in frames


def test_test_episodes_exact_count_fresh_lstm_and_sampling() -> None:
    env, envs = walk_batch([[4], [6]])
    sink = Sink()
    policy = SpyPolicy(action=1)
    metrics = collect_test_episodes(env, policy, 5, burn_in_length=5, sink=sink)
    assert [m.episode_id for m in metrics] == [0, 1, 2, 3, 4]
    assert [m.length for m in metrics] == [4, 6, 4, 6, 4]
    assert all(m.episode_return == m.length * 1.0 for m in metrics)
    names = policy.names()
    assert names.count("burn_in") == 1 and names.count("reset") == 3
    assert (policy.calls[1][1] == 0).all() and policy.calls[1][1].shape == (2, 5, 3, 3, 3)
    assert {args for name, args in policy.calls if name == "act"} == {(True, 1.0)}
    assert envs[1].steps_taken == 12  # idle in the last round, which needs one episode only
    stored = sink.episodes()
    assert sorted(stored) == [0, 1, 2, 3, 4] and all(f for _, f in stored.values())


def test_with_the_real_actor_critic_on_crafter() -> None:
    """The collector drives the project's ActorCritic through the Policy interface (also wrapped
    for CPU inference), with burn-in, episodes split across calls and a batch reset."""
    from iris_core.config import ActorCriticConfig, EnvSpec, FrameCnnConfig
    from iris_core.envs.factory import make_batch_env
    from iris_core.models.actor_critic import ActorCritic
    from iris_core.training.collector import InferencePolicy

    cnn = FrameCnnConfig(num_channels=8, mult=(1, 1, 1), down=(1, 1, 1), latent_dim=4, norm_groups=4)
    config = ActorCriticConfig(num_actions=17, lstm_dim=32, frame_encoder=cnn)
    for policy in (ActorCritic(config, 3).eval(), InferencePolicy(ActorCritic(config, 3).eval(), bf16=True)):
        sink = Sink()
        collector = Collector(
            make_batch_env(EnvSpec(max_episode_steps=15), 2, seed=0), sink, burn_in_length=5, seed=0
        )
        collector.collect(policy, 20, epsilon=0.01)
        collector.collect(policy, 20, epsilon=0.01)
        episodes = sink.episodes()
        assert [len(e) for e, finished in episodes.values() if finished] == [15, 15]
        assert all(e.obs.shape[1:] == (3, 64, 64) for e, _ in episodes.values())


class AutocastSpy(SpyPolicy):
    def act(
        self, obs: torch.Tensor, should_sample: bool, temperature: float, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        self.calls.append(("autocast", torch.is_autocast_enabled("cpu")))
        return super().act(obs, should_sample, temperature, rows)

    def burn_in(self, obs: torch.Tensor) -> None:
        self.calls.append(("autocast", torch.is_autocast_enabled("cpu")))


@pytest.mark.parametrize("bf16", [False, True])
def test_inference_policy_autocasts_only_when_asked(bf16: bool) -> None:
    spy = AutocastSpy()
    policy = InferencePolicy(spy, bf16=bf16)
    policy.reset(2)
    policy.burn_in(torch.zeros(2, 1, 3, 4, 4))
    policy.act(torch.zeros(2, 3, 4, 4), True, 1.0, torch.tensor([0, 1]))
    assert [value for name, value in spy.calls if name == "autocast"] == [bf16, bf16]
    assert spy.acting == [[0, 1]]
