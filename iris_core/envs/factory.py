"""Building environments from an :class:`~iris_core.config.EnvSpec`, and stepping many at once.

:class:`BatchEnv` has the reference's multi-process semantics (docs/method.md §4), not gymnasium's
auto-reset: the batch is reset only when *every* env is done, so all envs start their episodes
together; an env that is done keeps returning its final transition (and is not stepped) until that
reset; ``BatchStep.was_running`` says which envs were still running before the step, which is what
collection counts as steps. Observations come out channel-first, ``(N, C, H, W)`` uint8.

Envs run in this process, in worker processes, or both: each process owns a contiguous group of
envs, and with ``in_process_group`` this process steps its group while the workers step theirs
(one round trip per step; on 2 cores, one worker plus this process is the fastest). Either way
the envs' full state can be taken out with :meth:`BatchEnv.env_states` and put back with
:meth:`BatchEnv.load_env_states`.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import pickle
import signal
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import gymnasium
import numpy as np

from iris_core.config import EnvSpec
from iris_core.envs.atari import make_atari
from iris_core.envs.crafter import make_crafter

Obs = np.ndarray


class SeedFirstReset(gymnasium.Wrapper[Obs, Any, Obs, Any]):
    """Seeds the first reset with ``seed`` (later resets continue the env's own random stream)."""

    def __init__(self, env: gymnasium.Env[Obs, Any], seed: int) -> None:
        super().__init__(env)
        self.pending_seed: int | None = seed
        self.action_space.seed(seed)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        if seed is None:
            seed, self.pending_seed = self.pending_seed, None
        else:
            self.pending_seed = None
        return self.env.reset(seed=seed, options=options)


def make_env(spec: EnvSpec, seed: int) -> gymnasium.Env[Obs, Any]:
    """One environment as the paper builds it (docs/method.md §1), seeded with ``seed`` at first reset."""
    env: gymnasium.Env[Obs, Any]
    if spec.kind == "crafter":
        env = make_crafter(size=spec.size, max_episode_steps=spec.max_episode_steps, fast=spec.fast)
    elif spec.kind == "atari":
        assert spec.id is not None, "an Atari EnvSpec names its game"
        env = make_atari(
            spec.id,
            size=spec.size,
            max_episode_steps=spec.max_episode_steps,
            noop_max=spec.noop_max,
            frame_skip=spec.frame_skip,
            done_on_life_loss=spec.done_on_life_loss,
            clip_reward=spec.clip_reward,
        )
    else:
        raise ValueError(f"unknown env kind {spec.kind!r} (expected 'crafter' or 'atari')")
    return SeedFirstReset(env, seed)


def num_actions_of(env: gymnasium.Env[Obs, Any]) -> int:
    space = env.action_space
    assert isinstance(space, gymnasium.spaces.Discrete), space
    return int(space.n)


# ---------------------------------------------------------------------------------------------
# Batched stepping with reset-together semantics
# ---------------------------------------------------------------------------------------------


@dataclass
class BatchStep:
    obs: np.ndarray  # (N, C, H, W) uint8; a done env repeats its final observation
    rew: np.ndarray  # (N,) float32
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool
    infos: list[dict[str, Any]]  # per env, that env's last info
    was_running: np.ndarray  # (N,) bool: the env was running before this step (it really stepped)

    @property
    def done(self) -> np.ndarray:
        done: np.ndarray = np.logical_or(self.terminated, self.truncated)
        return done


_Transition = tuple[Obs, float, bool, bool, dict[str, Any]]


class _LocalGroup:
    """Envs in this process."""

    def __init__(self, env_fns: Sequence[Callable[[], gymnasium.Env[Obs, Any]]]) -> None:
        self.envs = [fn() for fn in env_fns]

    def reset(self, indices: Sequence[int]) -> list[tuple[Obs, dict[str, Any]]]:
        return [self.envs[i].reset() for i in indices]

    def step(self, indices: Sequence[int], actions: Sequence[Any]) -> list[_Transition]:
        out = []
        for i, a in zip(indices, actions, strict=True):
            obs, rew, terminated, truncated, info = self.envs[i].step(a)
            out.append((obs, float(rew), bool(terminated), bool(truncated), info))
        return out

    def get_states(self) -> list[bytes]:
        return [pickle.dumps(env) for env in self.envs]

    def set_states(self, states: Sequence[bytes]) -> None:
        self.envs = [pickle.loads(s) for s in states]

    def close(self) -> None:
        for env in self.envs:
            env.close()

    # The process-group protocol: a command "sent" here runs when its result is received, so
    # that it runs while the worker processes work on theirs.
    def send(self, command: str, *args: Any) -> None:
        self._pending = (command, args)

    def recv(self) -> Any:
        command, args = self._pending
        del self._pending
        return getattr(self, command)(*args)


@dataclass(frozen=True)
class _WorkerFailure:
    """What a worker sends back when its envs raised: the traceback, as text."""

    traceback: str


def _worker(conn: Connection, env_fns_bytes: bytes) -> None:
    group = _LocalGroup(pickle.loads(env_fns_bytes))
    while True:
        command, args = conn.recv()
        if command == "close":
            group.close()
            conn.close()
            return
        try:
            result = getattr(group, command)(*args)
        except Exception:
            result = _WorkerFailure(traceback.format_exc())
        conn.send(result)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Workers started in this block ignore SIGINT from their first instruction (an ignored signal
    stays ignored across exec, and Python then installs no handler of its own). Ctrl-C reaches the
    whole process group: the parent stops on it and closes its workers, which would otherwise each
    print a KeyboardInterrupt traceback."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield  # only the main thread may change handlers; None: a handler not set from Python
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _ProcessGroup:
    """Envs in one worker process; the same interface as :class:`_LocalGroup`, over a pipe."""

    def __init__(self, env_fns: Sequence[Callable[[], gymnasium.Env[Obs, Any]]], context: Any) -> None:
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_worker, args=(child, pickle.dumps(list(env_fns))), daemon=True
        )
        with _sigint_ignored():
            self._process.start()
        child.close()

    def send(self, command: str, *args: Any) -> None:
        self._conn.send((command, args))

    def recv(self) -> Any:
        return self._conn.recv()

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.send("close")
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.terminate()
        self._conn.close()


class BatchEnv:
    """``num_envs`` environments stepped together, reset together (see the module docstring)."""

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gymnasium.Env[Obs, Any]]],
        num_workers: int = 0,
        start_method: str = "spawn",
        in_process_group: bool = False,
    ) -> None:
        """``num_workers`` worker processes (0: every env in this process); with
        ``in_process_group`` this process steps one more group itself, while the workers step
        theirs. Results do not depend on the grouping: every env has its own random stream."""
        self.num_envs = len(env_fns)
        assert self.num_envs > 0
        probe = env_fns[0]()
        self.num_actions = num_actions_of(probe)
        self.single_obs_shape: tuple[int, ...] = tuple(probe.observation_space.shape or ())
        probe.close()
        num_local = 1 if num_workers <= 0 or in_process_group else 0
        num_groups = min(max(num_workers, 0) + num_local, self.num_envs)
        # Groups of contiguous env indices; group g owns envs [bounds[g], bounds[g+1]).
        self._bounds = np.linspace(0, self.num_envs, num_groups + 1).round().astype(int).tolist()
        spans = list(zip(self._bounds, self._bounds[1:], strict=False))
        self._groups: list[_LocalGroup | _ProcessGroup] = []
        self._broken: str | None = None  # set by an error that left the groups out of step
        try:
            if num_local:
                self._groups.append(_LocalGroup(env_fns[spans[0][0] : spans[0][1]]))
            if len(spans) > num_local:
                context = mp.get_context(start_method)
                for lo, hi in spans[num_local:]:
                    self._groups.append(_ProcessGroup(env_fns[lo:hi], context))
        except BaseException:
            self.close()  # the workers started so far
            raise
        self._running = np.zeros(self.num_envs, dtype=bool)
        self._last: list[_Transition | None] = [None] * self.num_envs

    @property
    def num_worker_processes(self) -> int:
        """Worker processes stepping envs (this one not counted)."""
        return sum(isinstance(g, _ProcessGroup) for g in self._groups)

    # -- dispatch to the groups --------------------------------------------------------------

    def _spans(self) -> list[tuple[_LocalGroup | _ProcessGroup, int, int]]:
        spans = zip(self._bounds, self._bounds[1:], strict=False)
        return [(group, lo, hi) for group, (lo, hi) in zip(self._groups, spans, strict=True)]

    def _exchange(self, sends: list[tuple[_LocalGroup | _ProcessGroup, str, tuple[Any, ...]]]) -> list[Any]:
        """Send every group its command, then collect the results in the same order. The workers
        get theirs first; the group in this process runs while they work.

        If any group fails, every reply already asked for is still collected (so that no stale
        reply is left in a pipe), the first error is raised, and this batch refuses further use:
        its envs may have stepped unevenly.
        """
        if self._broken is not None:
            raise RuntimeError(f"this BatchEnv is unusable after an earlier error ({self._broken})")
        error: BaseException | None = None
        sent: list[int] = []
        try:
            for k in sorted(range(len(sends)), key=lambda k: isinstance(sends[k][0], _LocalGroup)):
                group, command, args = sends[k]
                group.send(command, *args)
                sent.append(k)
        except BaseException as e:  # a worker is gone
            error = e
        results: list[Any] = [None] * len(sends)
        for k in sorted(sent, key=lambda k: not isinstance(sends[k][0], _LocalGroup)):
            try:
                results[k] = sends[k][0].recv()
            except BaseException as e:  # an env in this process raised, a worker died, Ctrl-C
                error = error or e
                continue
            if isinstance(results[k], _WorkerFailure):
                error = error or RuntimeError(f"an env worker failed:\n{results[k].traceback}")
        if error is not None:
            lines = str(error).strip().splitlines()  # a worker's: its traceback, cause last
            self._broken = f"{type(error).__name__}: {lines[-1] if lines else ''}"
            raise error
        return results

    def _call(self, command: str, per_env: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
        """Run ``command`` for the envs in ``per_env`` (env index -> extra args), grouped."""
        sends: list[tuple[_LocalGroup | _ProcessGroup, str, tuple[Any, ...]]] = []
        jobs: list[list[int]] = []
        for group, lo, hi in self._spans():
            indices = [i for i in sorted(per_env) if lo <= i < hi]
            if not indices:
                continue
            local = [i - lo for i in indices]
            if command == "reset":
                sends.append((group, "reset", (local,)))
            else:
                sends.append((group, "step", (local, [per_env[i][0] for i in indices])))
            jobs.append(indices)
        out: dict[int, Any] = {}
        for indices, results in zip(jobs, self._exchange(sends), strict=True):
            out.update(zip(indices, results, strict=True))
        return out

    # -- the vector-env API ------------------------------------------------------------------

    def reset(self, mask: np.ndarray | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Reset every env (or only those in ``mask``; the others count as done and stay idle)."""
        active = np.ones(self.num_envs, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        results = self._call("reset", {int(i): () for i in np.flatnonzero(active)})
        obs = np.zeros((self.num_envs, *self.single_obs_shape), dtype=np.uint8)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        self._last = [None] * self.num_envs
        for i, (o, info) in results.items():
            obs[i], infos[i] = o, info
            # An idle env repeats this "transition" if stepped.
            self._last[i] = (o, 0.0, False, False, info)
        for idle in np.flatnonzero(~active):
            self._last[idle] = (obs[idle], 0.0, False, False, {})
        self._running = active.copy()
        return _channel_first(obs), infos

    def step(self, actions: np.ndarray) -> BatchStep:
        actions = np.asarray(actions)
        assert actions.shape == (self.num_envs,), actions.shape
        was_running = self._running.copy()
        results = self._call("step", {int(i): (actions[i],) for i in np.flatnonzero(was_running)})
        for i, transition in results.items():
            self._last[i] = transition
            if transition[2] or transition[3]:
                self._running[i] = False
        transitions = self._last
        assert all(t is not None for t in transitions), "step() before reset()"
        obs = np.stack([t[0] for t in transitions if t is not None])
        return BatchStep(
            obs=_channel_first(obs),
            rew=np.array([t[1] for t in transitions if t is not None], dtype=np.float32),
            terminated=np.array([t[2] for t in transitions if t is not None], dtype=bool),
            truncated=np.array([t[3] for t in transitions if t is not None], dtype=bool),
            infos=[t[4] for t in transitions if t is not None],
            was_running=was_running,
        )

    @property
    def running(self) -> np.ndarray:
        """``(N,)`` bool: envs whose episode is still going."""
        return self._running.copy()

    @property
    def all_done(self) -> bool:
        return not self._running.any()

    # -- checkpointing -----------------------------------------------------------------------

    def env_states(self) -> dict[str, Any]:
        """Everything needed to continue exactly from here: pickled envs and the done tracking."""
        per_group = self._exchange([(group, "get_states", ()) for group in self._groups])
        envs = [state for states in per_group for state in states]
        return {"envs": envs, "running": self._running.copy(), "last": pickle.dumps(self._last)}

    def load_env_states(self, state: dict[str, Any]) -> None:
        envs = state["envs"]
        assert len(envs) == self.num_envs, (len(envs), self.num_envs)
        self._exchange([(group, "set_states", (envs[lo:hi],)) for group, lo, hi in self._spans()])
        self._running = np.asarray(state["running"], dtype=bool).copy()
        self._last = pickle.loads(state["last"])

    def close(self) -> None:
        """Close every group, even if one of them raises (the first error is re-raised)."""
        error: BaseException | None = None
        for group in self._groups:
            try:
                group.close()
            except BaseException as e:
                error = error or e
        self._groups = []
        if error is not None:
            raise error


def _channel_first(obs: np.ndarray) -> np.ndarray:
    """``(N, H, W, C)`` -> ``(N, C, H, W)``, contiguous (the layout of stored frames and networks)."""
    return np.ascontiguousarray(obs.transpose(0, 3, 1, 2))


def make_batch_env(spec: EnvSpec, num_envs: int, seed: int, processes: int = 1) -> BatchEnv:
    """``num_envs`` envs of ``spec``; env ``i`` is seeded with ``seed + i``.

    ``processes`` share the stepping: this one and ``processes - 1`` workers, each with a
    contiguous group of envs (1: all in this process).
    """
    assert processes >= 1, f"processes must be >= 1, got {processes}"
    env_fns = [_EnvFn(spec, seed + i) for i in range(num_envs)]
    return BatchEnv(env_fns, num_workers=processes - 1, in_process_group=True)


@dataclass(frozen=True)
class _EnvFn:
    """A picklable env constructor (worker processes are spawned)."""

    spec: EnvSpec
    seed: int

    def __call__(self) -> gymnasium.Env[Obs, Any]:
        return make_env(self.spec, self.seed)
