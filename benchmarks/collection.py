"""Collection speed: env steps per second for 16 Crafter envs, random policy and untrained actor-critic.

Runs the real :class:`~iris_core.training.collector.Collector` (reset-together semantics, steps of
running envs only) and prints a table, plus where the time goes: world generation at reset, one
env step (mostly rendering), one policy call on a batch of frames. Numba on/off rows run in
subprocesses (``NUMBA_DISABLE_JIT=1``), since Crafter's world generation JIT-compiles on import.

    python benchmarks/collection.py                      # all rows
    python benchmarks/collection.py --policy random --numba on --steps 3000
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from functools import partial
from typing import Any

import numpy as np
import torch

from iris_core.config import IrisConfig
from iris_core.envs.crafter import make_crafter
from iris_core.envs.factory import BatchEnv, SeedFirstReset
from iris_core.models.actor_critic import ActorCritic
from iris_core.training.collector import Collector, InferencePolicy


def make_policy(num_actions: int) -> ActorCritic:
    """The untrained actor-critic of the paper's Crafter configuration."""
    config = IrisConfig().with_num_actions(num_actions).actor_critic
    model = ActorCritic(config, image_channels=3)
    model.eval()
    return model


def _crafter_env(seed: int, fast: bool) -> Any:
    return SeedFirstReset(make_crafter(fast=fast), seed)


def time_components(num_envs: int, policy_name: str, fast: bool, bf16: bool) -> dict[str, float]:
    env = _crafter_env(0, fast)
    env.reset()  # the first reset pays numba's compilation
    start = time.perf_counter()
    for _ in range(3):
        env.reset()
    reset_ms = (time.perf_counter() - start) / 3 * 1e3
    rng = np.random.default_rng(0)
    start, steps = time.perf_counter(), 300
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(int(rng.integers(17)))
        if terminated or truncated:
            env.reset()
    step_ms = (time.perf_counter() - start) / steps * 1e3
    out = {"reset_ms": reset_ms, "env_step_ms": step_ms}
    if policy_name == "actor-critic":
        policy = InferencePolicy(make_policy(17), bf16) if fast else make_policy(17)
        obs = torch.rand(num_envs, 3, 64, 64)
        with torch.no_grad():
            policy.reset(num_envs)
            policy.act(obs, True, 1.0)
            start, calls = time.perf_counter(), 20
            for _ in range(calls):
                policy.act(obs, True, 1.0)
        out["policy_ms"] = (time.perf_counter() - start) / calls * 1e3
    return out


def run_row(
    num_envs: int, steps: int, policy_name: str, processes: int, fast: bool, bf16: bool
) -> dict[str, Any]:
    env_fns = [partial(_crafter_env, i, fast) for i in range(num_envs)]
    env = BatchEnv(env_fns, num_workers=processes - 1, in_process_group=True)
    collector = Collector(env, None, burn_in_length=5, seed=0)
    policy: Any = None
    if policy_name == "actor-critic":
        policy = make_policy(env.num_actions)
        if fast:
            policy = InferencePolicy(policy, bf16)
    epsilon = 0.0 if policy is not None else 1.0
    collector.collect(policy, num_envs, epsilon=epsilon)  # warm-up: first resets, numba compilation
    start = time.perf_counter()
    result = collector.collect(policy, steps, epsilon=epsilon)
    seconds = time.perf_counter() - start
    env.close()
    row: dict[str, Any] = {
        "policy": policy_name,
        "numba": os.environ.get("NUMBA_DISABLE_JIT", "0") != "1",
        "path": ("fast" + ("+bf16" if bf16 and policy_name != "random" else "")) if fast else "crafter",
        "envs": num_envs,
        "processes": processes,
        "steps": result.num_steps,
        "episodes": len(result.episodes),
        "steps_per_s": result.num_steps / seconds,
    }
    row.update(time_components(num_envs, policy_name, fast, bf16))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--policy", choices=["random", "actor-critic", "both"], default="both")
    parser.add_argument("--numba", choices=["on", "off", "both"], default="both")
    parser.add_argument("--processes", type=int, default=1,
                        help="processes stepping envs: this one plus processes - 1 workers")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--path", choices=["fast", "crafter", "both"], default="both",
                        help="fast: our fast path; crafter: crafter's own code, plain policy")  # fmt: skip
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the policy on the fast path")
    parser.add_argument("--row", action="store_true", help=argparse.SUPPRESS)  # one row, JSON out
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.row:
        print(
            json.dumps(
                run_row(args.envs, args.steps, args.policy, args.processes, args.path != "crafter", args.bf16)
            )
        )
        return

    policies = ["random", "actor-critic"] if args.policy == "both" else [args.policy]
    numbas = ["on", "off"] if args.numba == "both" else [args.numba]
    paths = ["crafter", "fast"] if args.path == "both" else [args.path]
    rows = []
    for numba, policy, path in itertools.product(numbas, policies, paths):
        if True:
            env = dict(os.environ)
            if numba == "off":
                env["NUMBA_DISABLE_JIT"] = "1"
            command = [sys.executable, __file__, "--row", "--envs", str(args.envs),
                       "--steps", str(args.steps), "--policy", policy, "--processes", str(args.processes),
                       "--threads", str(args.threads), "--path", path]  # fmt: skip
            command += ["--bf16"] if args.bf16 else []
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(_format([rows[-1]], header=len(rows) == 1), flush=True)
    with open("/proc/loadavg") as f:
        print(f"load average: {' '.join(f.read().split()[:3])} on {os.cpu_count()} cores")


def _format(rows: list[dict[str, Any]], header: bool) -> str:
    columns = ["policy", "path", "numba", "envs", "processes", "steps", "episodes", "steps_per_s", "reset_ms",
               "env_step_ms", "policy_ms"]  # fmt: skip
    lines = []
    if header:
        lines.append(" | ".join(f"{c:>12}" for c in columns))
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c, "")
            cells.append(f"{value:>12.1f}" if isinstance(value, float) else f"{value!s:>12}")
        lines.append(" | ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
