"""Seconds per optimiser step, peak memory and achieved FLOP rate of each component.

Run as ``python -m benchmarks.components --preset crafter --component tokenizer`` (or
``--component all``, which runs each component in its own process so that peak RSS is per
component). Defaults are the paper's batches (docs/method.md §3): Crafter tokenizer and world model
32 × 21 frames, actor-critic 86 segments of 6 frames with horizon 15. ``--batch-size`` and
``--steps`` make a quick run. Inputs are random frames and actions: the cost of a step does not
depend on their values (imagination always runs the full horizon).

After one warm-up step and the timed steps, one more step runs under ``FlopCounterMode``: its
FLOP count divided by the measured seconds per step is the achieved rate, compared with the
machine's peak (a large square matmul in fp32 and in bf16). The tokenizer and world model run
under bf16 autocast on CPU too, as the reference numbers were taken (``--no-cpu-bf16``: fp32).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from iris_core.config import IrisConfig, RuntimeConfig
from iris_core.data.structures import Batch, SegmentId
from iris_core.models.agent import Agent
from iris_core.models.runtime import apply_runtime
from iris_core.training.optim import make_optimizer
from iris_core.training.train_component import train_component

COMPONENTS = ("tokenizer", "world_model", "actor_critic")
DEFAULT_NUM_ACTIONS = {"crafter": 17, "atari": 4}


def load_preset(preset: str, num_actions: int) -> IrisConfig:
    # The benchmarks may use the plant's loader: only iris_core must stay free of it.
    from pipelines.config import load_config

    return load_config(env=preset, params=preset).with_num_actions(num_actions)


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, size: int, seconds: float = 1.0) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up
    sync(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        runs += 1
        sync(device)
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batch(config: IrisConfig, component: str, batch_size: int, device: torch.device) -> Batch:
    length = getattr(config.training, component).sequence_length
    channels, size = config.tokenizer.image_channels, config.tokenizer.image_size
    assert config.num_actions is not None
    return Batch(
        obs=torch.randint(0, 256, (batch_size, length, channels, size, size), dtype=torch.uint8),
        act=torch.randint(0, config.num_actions, (batch_size, length)),
        rew=torch.zeros(batch_size, length),
        end=torch.zeros(batch_size, length, dtype=torch.long),
        mask_padding=torch.ones(batch_size, length, dtype=torch.bool),
        segment_ids=[SegmentId(i, 0, length) for i in range(batch_size)],
    ).to(device)


class ImaginationTimer:
    """Wraps the actor-critic's rollout function to time it (benchmark-only instrumentation)."""

    def __init__(self, device: torch.device, imagine: Any) -> None:
        self.device, self.seconds, self.imagine = device, 0.0, imagine

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sync(self.device)
        start = time.perf_counter()
        result = self.imagine(*args, **kwargs)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        return result


def run_component(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    config = load_preset(args.preset, args.num_actions or DEFAULT_NUM_ACTIONS[args.preset])
    component_config = getattr(config.training, args.component)
    batch_size = args.batch_size or component_config.batch_num_samples
    agent = apply_runtime(Agent(config), runtime_config(args.runtime), device)
    component = getattr(agent, args.component)
    deps: dict[str, torch.nn.Module] = (
        {"tokenizer": agent.tokenizer.eval()} if args.component != "tokenizer" else {}
    )
    if args.component == "actor_critic":
        deps["world_model"] = agent.world_model.eval()
    optimizer = make_optimizer(component, config.training, component_config)
    batch = random_batch(config, args.component, batch_size, device)
    force_bf16 = args.cpu_bf16 and args.component != "actor_critic"
    timer = ImaginationTimer(device, agent.actor_critic.imagine)
    agent.actor_critic.imagine = timer

    def steps(n: int) -> None:
        train_component(
            component, optimizer, component_config, lambda: batch, n, name=args.component, deps=deps,
            force_bf16_on_cpu=force_bf16,
        )  # fmt: skip

    steps(1)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer.seconds = 0.0
    sync(device)
    start = time.perf_counter()
    steps(args.steps)
    sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    imagination_seconds = timer.seconds / args.steps
    # Peaks are read before counting FLOPs: the counter's bookkeeping would inflate them.
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    peak_gpu_gb = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    with FlopCounterMode(display=False) as counter:
        steps(1)
    flops = counter.get_total_flops()
    uses_bf16 = component_config.bf16_autocast and (device.type == "cuda" or force_bf16)
    return {
        "component": args.component,
        "runtime": args.runtime,
        "batch": f"{batch_size}×{batch.act.size(1)}",
        "s_per_step": seconds,
        "imagination_s": imagination_seconds if args.component == "actor_critic" else None,
        "peak_rss_gb": peak_rss_gb,
        "peak_gpu_gb": peak_gpu_gb,
        "gflop_per_step": flops / 1e9,
        "dtype": "bf16" if uses_bf16 else "fp32",
    }


def runtime_config(spec: str) -> RuntimeConfig:
    """``default`` (the device's defaults), ``plain`` (every optimisation off) or
    ``name=value,...`` over the defaults, e.g. ``checkpoint_cnns=false,cpu_kernels=false``."""
    if spec == "default":
        return RuntimeConfig()
    names = [f.name for f in dataclasses.fields(RuntimeConfig)]
    if spec == "plain":
        return RuntimeConfig(**dict.fromkeys(names, False))
    values = {}
    for item in spec.split(","):
        name, _, value = item.partition("=")
        if name not in names or value not in ("true", "false"):
            raise SystemExit(f"--runtime: expected name=true|false with a name in {names}, got {item!r}")
        values[name] = value == "true"
    return RuntimeConfig(**values)


def child_command(args: argparse.Namespace, component: str) -> list[str]:
    command = [sys.executable, "-m", "benchmarks.components", "--json", "--component", component]
    for flag in ("preset", "device", "steps", "batch_size", "num_actions", "threads", "runtime"):
        value = getattr(args, flag)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    return command + ([] if args.cpu_bf16 else ["--no-cpu-bf16"])


def run_child(args: argparse.Namespace, component: str) -> dict[str, Any]:
    result = subprocess.run(child_command(args, component), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"benchmark of {component} failed:\n{result.stderr}")
    row: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return row


def print_table(rows: list[dict[str, Any]], peaks: dict[str, float], device: torch.device) -> None:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    print(f"device {device}, threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    print(f"matmul peak: fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s")
    header = ("component", "batch", "s/step", "imagine s", "peak RSS GB", "peak GPU GB", "GFLOP/step",
              "GFLOP/s", "% peak")  # fmt: skip
    print(" | ".join(header))
    for row in rows:
        rate = row["gflop_per_step"] / row["s_per_step"]
        cells = (
            row["component"], row["batch"], fmt(row["s_per_step"], ".2f"), fmt(row["imagination_s"], ".2f"),
            fmt(row["peak_rss_gb"], ".2f"), fmt(row["peak_gpu_gb"], ".2f"), fmt(row["gflop_per_step"], ".1f"),
            fmt(rate, ".1f"), f"{100 * rate / peaks[row['dtype']]:.0f} ({row['dtype']})",
        )  # fmt: skip
        print(" | ".join(cells))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(DEFAULT_NUM_ACTIONS), default="crafter")
    parser.add_argument("--component", choices=(*COMPONENTS, "all"), default="all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=2, help="timed optimiser steps after one warm-up step")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: the preset's batch_num_samples"
    )
    parser.add_argument("--num-actions", type=int, default=None, help="default: 17 (Crafter), 4 (Atari)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--runtime", default="default", help="optimisation layer: default, plain, or name=true|false,..."
    )
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--no-cpu-bf16", dest="cpu_bf16", action="store_false",
                        help="run tokenizer and world model in fp32 on CPU")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON row (used by --component all)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.json:
        print(json.dumps(run_component(args)))
        return
    device = torch.device(args.device)
    components = COMPONENTS if args.component == "all" else (args.component,)
    rows = [run_child(args, component) for component in components]
    peaks = {name: matmul_peak_gflops(device, dtype, args.matmul_size)
             for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}  # fmt: skip
    print_table(rows, peaks, device)


if __name__ == "__main__":
    main()
