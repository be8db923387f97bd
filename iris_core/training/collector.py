"""Experience collection with the policy, and test episodes (docs/method.md §4).

Training collection (:class:`Collector`), with the reference's semantics:

- epoch 1 is fully random: ε is forced to 1 and the network is never run;
- later, ε-greedy is *batch-wide*: with probability ε the whole action vector is random;
  otherwise actions are sampled from the policy at ``temperature``;
- at the start of each call (ε < 1) the policy's LSTM is burned in on the last
  ``burn_in_length`` stored frames of each env's ongoing episode (left zero-padded), or on
  ``burn_in_length`` zero frames when every env starts a fresh episode; envs reset in the middle of
  a call only get a zeroed LSTM state (``policy.reset(n)``);
- envs are reset together when all are done; steps count only envs still running before the step;
  the overshoot past ``num_steps`` (at most ``num_envs - 1``) is deducted from the next call;
- episodes continue across calls: at the end of a call every unfinished episode is written as a
  part (``finished=False``) and the next call continues it under the same episode id.

Output goes to an :class:`EpisodeSink` one part at a time: the parts of an episode, concatenated in
order of ``start``, are the episode. Between calls the collector's whole state (envs included) is
plain data: :meth:`Collector.state_dict` / :meth:`Collector.load_state_dict`.

Test collection (:func:`collect_test_episodes`): ε = 0 by default but actions still *sampled* at
temperature 1, a fresh LSTM burned in on zero frames, exactly ``num_episodes`` complete episodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from iris_core.config import TestCollectionConfig, TrainCollectionConfig
from iris_core.data.structures import Episode
from iris_core.envs.factory import BatchEnv, BatchStep


class Policy(Protocol):
    """What collection needs from the actor-critic (the LSTM state lives inside it)."""

    def reset(self, n: int) -> None:
        """Zero the recurrent state of ``n`` envs."""

    def burn_in(self, obs: torch.Tensor) -> None:
        """Advance the recurrent state over ``obs`` ``(N, T, C, H, W)`` float in [0, 1]."""

    def act(
        self, obs: torch.Tensor, should_sample: bool, temperature: float, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(M,)`` long actions for ``obs`` ``(M, C, H, W)`` float in [0, 1]; advances the state.

        ``rows``: the envs the M frames belong to when only some envs act (the others keep
        their state); None: all envs, in order.
        """
        ...


class InferencePolicy:
    """A policy run under bf16 autocast when ``bf16`` (config ``collection.train.policy_bf16``).

    About 1.7× faster on CPUs with bf16 instructions (and on GPUs), but the action
    probabilities then differ slightly from fp32, the reference's precision: off by default.
    """

    def __init__(self, policy: Policy, bf16: bool = False) -> None:
        self.policy = policy
        self.bf16 = bf16

    def _autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def reset(self, n: int) -> None:
        self.policy.reset(n)

    def burn_in(self, obs: torch.Tensor) -> None:
        with self._autocast(obs.device):
            self.policy.burn_in(obs)

    def act(
        self, obs: torch.Tensor, should_sample: bool, temperature: float, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        with self._autocast(obs.device):
            return self.policy.act(obs, should_sample, temperature, rows)


class EpisodeSink(Protocol):
    """Where collected steps go (episode storage implements it).

    ``part`` holds steps ``[start, start + len(part))`` of episode ``episode_id``; parts of one
    episode arrive in order, and the last one has ``finished=True`` (its final ``end`` is 1).
    Every part's ``info`` holds the per-episode facts known at its last step, such as Crafter's
    ``achievements`` counters so far. A part is never empty.
    """

    def write(self, episode_id: int, part: Episode, *, start: int, finished: bool) -> None: ...


@dataclass
class EpisodeMetrics:
    episode_id: int
    length: int
    episode_return: float
    action_counts: np.ndarray  # (num_actions,) int64
    achievements: dict[str, int] | None = None  # Crafter's counters at the episode's last step
    truncated: bool = False  # ended by the time limit


@dataclass
class CollectResult:
    num_steps: int  # env steps counted in this call (running envs only)
    episodes: list[EpisodeMetrics] = field(default_factory=list)  # episodes that ended in this call


@dataclass
class _OngoingEpisode:
    """One env's current episode: the steps not yet written, and running totals."""

    episode_id: int
    written: int = 0  # steps already sent to the sink
    episode_return: float = 0.0
    action_counts: np.ndarray | None = None
    tail: np.ndarray | None = None  # the last burn_in_length frames already written
    finished: bool = False
    last_info: dict[str, Any] = field(default_factory=dict)  # info of the last recorded step
    obs: list[np.ndarray] = field(default_factory=list)
    act: list[int] = field(default_factory=list)
    rew: list[float] = field(default_factory=list)
    end: list[int] = field(default_factory=list)
    trunc: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.written + len(self.obs)

    def append(self, obs: np.ndarray, act: int, rew: float, end: bool, trunc: bool, num_actions: int) -> None:
        self.obs.append(obs)
        self.act.append(act)
        self.rew.append(rew)
        self.end.append(int(end))
        self.trunc.append(int(trunc))
        self.episode_return += rew
        if self.action_counts is None:
            self.action_counts = np.zeros(num_actions, dtype=np.int64)
        self.action_counts[act] += 1

    def flush(self, sink: EpisodeSink | None, burn_in_length: int) -> None:
        """Write the buffered steps as one part and keep the last frames for the next burn-in.

        Every part carries the per-episode facts known at its last step (Crafter: achievement
        counters so far), so storage can tabulate parts without waiting for the episode's end.
        """
        if not self.obs:
            return
        info = _episode_info(self.last_info)
        part = Episode(
            obs=np.stack(self.obs),
            act=np.array(self.act, dtype=np.int64),
            rew=np.array(self.rew, dtype=np.float32),
            end=np.array(self.end, dtype=np.uint8),
            trunc=np.array(self.trunc, dtype=np.uint8),
            info=info,
        )
        if sink is not None:
            sink.write(self.episode_id, part, start=self.written, finished=self.finished)
        if burn_in_length > 0:
            frames = part.obs if self.tail is None else np.concatenate([self.tail, part.obs])
            self.tail = frames[-burn_in_length:].copy()
        self.written += len(part)
        self.obs, self.act, self.rew, self.end, self.trunc = [], [], [], [], []

    def burn_in_frames(self, burn_in_length: int, frame_shape: tuple[int, ...]) -> np.ndarray:
        """``(burn_in_length, C, H, W)`` uint8: the last written frames, zero-padded on the left."""
        out = np.zeros((burn_in_length, *frame_shape), dtype=np.uint8)
        if self.tail is not None and len(self.tail) > 0:
            out[burn_in_length - len(self.tail) :] = self.tail
        return out


def _episode_info(step_info: dict[str, Any]) -> dict[str, object]:
    """Per-episode facts kept from the last step's info (Crafter: the achievement counters)."""
    if "achievements" in step_info:
        return {"achievements": dict(step_info["achievements"])}
    return {}


def _to_float(obs: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(obs).to(device).float().div_(255)


def _record_step(
    episodes: Sequence[_OngoingEpisode],
    obs: np.ndarray,
    act: np.ndarray,
    step: BatchStep,
    num_actions: int,
    sink: EpisodeSink | None,
    burn_in_length: int,
    mask: np.ndarray | None = None,
) -> list[EpisodeMetrics]:
    """Store the transitions of the envs that really stepped; finish the episodes that ended."""
    finished = []
    record = step.was_running if mask is None else step.was_running & mask
    for i in map(int, np.flatnonzero(record)):
        episode = episodes[i]
        done = bool(step.done[i])
        # A time limit hit together with death counts as death: ``trunc`` marks pure timeouts.
        trunc = bool(step.truncated[i] and not step.terminated[i])
        episode.append(obs[i], int(act[i]), float(step.rew[i]), done, trunc, num_actions)
        episode.last_info = step.infos[i]
        if done:
            episode.finished = True
            episode.flush(sink, burn_in_length)
            assert episode.action_counts is not None
            achievements = _episode_info(episode.last_info).get("achievements")
            finished.append(
                EpisodeMetrics(
                    episode_id=episode.episode_id,
                    length=episode.length,
                    episode_return=episode.episode_return,
                    action_counts=episode.action_counts.copy(),
                    achievements=dict(achievements) if isinstance(achievements, dict) else None,
                    truncated=trunc,
                )
            )
    return finished


class Collector:
    """Training collection over a :class:`BatchEnv` whose episodes outlive a call (module docstring)."""

    def __init__(
        self,
        env: BatchEnv,
        sink: EpisodeSink | None,
        *,
        burn_in_length: int,
        seed: int,
        first_episode_id: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.env = env
        self.sink = sink
        self.burn_in_length = burn_in_length
        self.device = torch.device(device)
        self.num_actions = env.num_actions
        self._rng = np.random.default_rng(seed)
        self._next_episode_id = first_episode_id
        self._obs: np.ndarray | None = None  # (N, C, H, W) uint8, the frames the next actions act on
        self._episodes: list[_OngoingEpisode] = []
        self._excess_steps = 0

    def collect_epoch(
        self,
        policy: Policy | None,
        epoch: int,
        config: TrainCollectionConfig,
        on_steps: Callable[[int], None] | None = None,
    ) -> CollectResult:
        """Collection of paper epoch ``epoch`` (1-based): epoch 1 is random, later ones use ``policy``."""
        epsilon = 1.0 if epoch == 1 else config.epsilon
        return self.collect(
            policy,
            config.steps_in_epoch(epoch),
            epsilon=epsilon,
            should_sample=config.should_sample,
            temperature=config.temperature,
            on_steps=on_steps,
        )

    @torch.no_grad()
    def collect(
        self,
        policy: Policy | None,
        num_steps: int,
        *,
        epsilon: float,
        should_sample: bool = True,
        temperature: float = 1.0,
        on_steps: Callable[[int], None] | None = None,
    ) -> CollectResult:
        """Step the envs until ``num_steps`` (minus the last call's overshoot) env steps are counted.

        ``on_steps(steps)`` (progress reports) is called with the steps counted so far, after each
        batch step."""
        assert 0.0 <= epsilon <= 1.0, epsilon
        use_policy = epsilon < 1.0
        assert policy is not None or not use_policy, "a policy is needed when epsilon < 1"
        target = max(0, num_steps - self._excess_steps)
        self._excess_steps = 0
        result = CollectResult(num_steps=0)
        if target == 0:
            return result
        if self._obs is None:
            self._start_episodes()
        assert self._obs is not None
        if use_policy:
            assert policy is not None
            policy.reset(self.env.num_envs)
            self._burn_in(policy)

        steps = 0
        while steps < target:
            obs = self._obs
            if use_policy:
                assert policy is not None
                act = _act_running(policy, obs, self.env.running, self.device, should_sample, temperature)
            if not use_policy or self._rng.random() < epsilon:
                act = self._rng.integers(self.num_actions, size=self.env.num_envs)
            act = act.astype(np.int64)
            step = self.env.step(act)
            result.episodes += _record_step(
                self._episodes, obs, act, step, self.num_actions, self.sink, self.burn_in_length
            )
            steps += int(step.was_running.sum())
            if on_steps is not None:
                on_steps(steps)
            if self.env.all_done:
                self._start_episodes()
                if use_policy:
                    assert policy is not None
                    policy.reset(self.env.num_envs)
            else:
                self._obs = step.obs

        for episode in self._episodes:
            if not episode.finished:
                episode.flush(self.sink, self.burn_in_length)
        self._excess_steps = steps - target
        result.num_steps = steps
        return result

    def _start_episodes(self) -> None:
        self._obs, _ = self.env.reset()
        num_envs = self.env.num_envs
        ids = range(self._next_episode_id, self._next_episode_id + num_envs)
        self._episodes = [_OngoingEpisode(episode_id=i) for i in ids]
        self._next_episode_id += num_envs

    def _burn_in(self, policy: Policy) -> None:
        if self.burn_in_length == 0:
            return
        assert self._obs is not None
        frame_shape = self._obs.shape[1:]
        # All fresh (right after a batch reset) -> zero frames; otherwise each env's last frames.
        frames = np.stack([e.burn_in_frames(self.burn_in_length, frame_shape) for e in self._episodes])
        policy.burn_in(_to_float(frames, self.device))

    # -- checkpointing (between calls) -----------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything that carries over to the next call, as plain data (pickle / torch.save it)."""
        assert all(not e.obs for e in self._episodes), "state_dict() is taken between calls"
        return {
            "env": self.env.env_states(),
            "obs": None if self._obs is None else self._obs.copy(),
            "episodes": [
                {
                    "episode_id": e.episode_id,
                    "written": e.written,
                    "episode_return": e.episode_return,
                    "action_counts": e.action_counts,
                    "tail": e.tail,
                    "finished": e.finished,
                }
                for e in self._episodes
            ],
            "excess_steps": self._excess_steps,
            "next_episode_id": self._next_episode_id,
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.env.load_env_states(state["env"])
        self._obs = state["obs"]
        self._episodes = [_OngoingEpisode(**e) for e in state["episodes"]]
        self._excess_steps = int(state["excess_steps"])
        self._next_episode_id = int(state["next_episode_id"])
        self._rng.bit_generator.state = state["rng"]

    @property
    def next_episode_id(self) -> int:
        return self._next_episode_id


def _act_running(
    policy: Policy,
    obs: np.ndarray,
    running: np.ndarray,
    device: torch.device,
    should_sample: bool,
    temperature: float,
) -> np.ndarray:
    """Actions of all envs; only the running ones ask the policy (a finished env waiting for the
    others' reset gets action 0, which is never executed). Runs without autograd."""
    with torch.no_grad():
        if running.all():
            return policy.act(_to_float(obs, device), should_sample, temperature).cpu().numpy()
        act = np.zeros(len(running), dtype=np.int64)
        rows = np.flatnonzero(running)
        if len(rows) > 0:
            frames = _to_float(obs[rows], device)
            rows_t = torch.from_numpy(rows).to(device)
            act[rows] = policy.act(frames, should_sample, temperature, rows_t).cpu().numpy()
        return act


@torch.no_grad()
def collect_test_episodes(
    env: BatchEnv,
    policy: Policy,
    num_episodes: int,
    *,
    burn_in_length: int,
    epsilon: float = 0.0,
    should_sample: bool = True,
    temperature: float = 1.0,
    seed: int = 0,
    sink: EpisodeSink | None = None,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, int], None] | None = None,
) -> list[EpisodeMetrics]:
    """Exactly ``num_episodes`` complete test episodes, with ids ``0..num_episodes-1``.

    ``on_step(episodes_done, env_steps)`` (progress reports) is called after every step of the envs.

    The envs play in rounds that start together. The first round starts from an LSTM burned in on
    ``burn_in_length`` zero frames, later rounds from a zeroed LSTM (the reference's mid-call
    reset). A last, partial round keeps the episodes of the first envs by index (not the first to
    finish, which would favour short episodes) and leaves the other envs idle.
    """
    assert num_episodes > 0 and 0.0 <= epsilon <= 1.0
    rng = np.random.default_rng(seed)
    device = torch.device(device)
    num_envs = env.num_envs
    metrics: list[EpisodeMetrics] = []
    env_steps = 0
    first_round = True
    while len(metrics) < num_episodes:
        keep = min(num_envs, num_episodes - len(metrics))
        mask = np.arange(num_envs) < keep
        obs, _ = env.reset(mask)
        episodes = [_OngoingEpisode(episode_id=len(metrics) + i) for i in range(num_envs)]
        policy.reset(num_envs)
        if first_round and burn_in_length > 0:
            policy.burn_in(torch.zeros((num_envs, burn_in_length, *obs.shape[1:]), device=device))
        first_round = False
        round_metrics: list[EpisodeMetrics] = []
        while not env.all_done:
            act = _act_running(policy, obs, env.running, device, should_sample, temperature)
            if epsilon > 0.0 and rng.random() < epsilon:
                act = rng.integers(env.num_actions, size=num_envs)
            act = act.astype(np.int64)
            env_steps += int(np.count_nonzero(env.running))
            step = env.step(act)
            round_metrics += _record_step(episodes, obs, act, step, env.num_actions, sink, 0, mask)
            obs = step.obs
            if on_step is not None:
                on_step(len(metrics) + len(round_metrics), env_steps)
        metrics += sorted(round_metrics, key=lambda m: m.episode_id)
    return metrics


def collect_test_epoch(
    env: BatchEnv,
    policy: Policy,
    config: TestCollectionConfig,
    *,
    burn_in_length: int,
    seed: int,
    sink: EpisodeSink | None = None,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, int], None] | None = None,
) -> list[EpisodeMetrics]:
    """:func:`collect_test_episodes` with the test collection settings of the config."""
    return collect_test_episodes(
        env,
        policy,
        config.num_episodes,
        burn_in_length=burn_in_length,
        epsilon=config.epsilon,
        should_sample=config.should_sample,
        temperature=config.temperature,
        seed=seed,
        sink=sink,
        device=device,
        on_step=on_step,
    )
