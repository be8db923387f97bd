"""The GPU check: each component at the paper's batches, plain against each optimisation.

Run on a CUDA machine as ``python -m benchmarks.gpu`` (about 10 minutes on one H100 with the
default ``--steps``). For each component (Crafter preset: tokenizer and world model 32 × 21
frames, actor-critic 86 × 6 with a 15-step imagination) and each runtime variant it prints
ms per optimizer step, peak GPU memory, kernel launches and host syncs per step, and for the
actor-critic the imagined transitions per second. Each (component, variant) runs in its own
process, so that peak memory, compile caches and process-wide flags (TF32) stay separate.

Variants: ``plain`` (every optimisation off, fp32 matmuls), ``tf32``, ``channels_last``,
``fused_adam``, ``default`` (the optimisation layer's CUDA defaults), ``default+compile``
(plus ``torch.compile``; imagination with CUDA graphs). bf16 autocast follows the paper in all
of them (tokenizer and world model). ``--device cpu --batch-size 2 --steps 1`` runs the same
code as a smoke test without a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from typing import Any

import torch

from benchmarks.components import ImaginationTimer, random_batch, sync
from iris_core.config import IrisConfig, RuntimeConfig
from iris_core.models.agent import Agent
from iris_core.models.runtime import apply_runtime, optimizer_options
from iris_core.training.optim import make_optimizer
from iris_core.training.train_component import train_component

COMPONENTS = ("tokenizer", "world_model", "actor_critic")
ALL_OFF = {
    "channels_last": False,
    "checkpoint_cnns": False,
    "compile": False,
    "tf32": False,
    "fused_adam": False,
}
VARIANTS: dict[str, dict[str, bool]] = {
    "plain": ALL_OFF,
    "tf32": {**ALL_OFF, "tf32": True},
    "channels_last": {**ALL_OFF, "channels_last": True},
    "fused_adam": {**ALL_OFF, "fused_adam": True},
    "default": {},
    "default+compile": {"compile": True},
}


def kernel_launches(step: Any, device: torch.device) -> int:
    """CUDA kernel launches during ``step()`` (0 on CPU)."""
    if device.type != "cuda":
        step()
        return 0
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        sync(device)
    names = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cudaGraphLaunch")
    return sum(event.count for event in prof.key_averages() if event.key in names)


def host_syncs(step: Any, device: torch.device) -> int:
    """Synchronising CUDA calls during ``step()``, as torch's sync debug mode reports them."""
    if device.type != "cuda":
        step()
        return 0
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    config = IrisConfig().with_num_actions(17)  # the paper's Crafter values
    runtime = RuntimeConfig(**VARIANTS[args.variant])
    agent = apply_runtime(Agent(config), runtime, device)
    name = args.component
    component = getattr(agent, name)
    deps: dict[str, torch.nn.Module] = {"tokenizer": agent.tokenizer.eval()} if name != "tokenizer" else {}
    if name == "actor_critic":
        deps["world_model"] = agent.world_model.eval()
    training = getattr(config.training, name)
    optimizer = make_optimizer(component, config.training, training, optimizer_options(runtime, device))
    batch = random_batch(config, name, args.batch_size or training.batch_num_samples, device)
    timer = ImaginationTimer(device, agent.actor_critic.imagine)
    agent.actor_critic.imagine = timer

    def steps(n: int) -> None:
        train_component(component, optimizer, training, lambda: batch, n, name=name, deps=deps)

    steps(args.warmup)  # compilation, cuDNN autotuning, CUDA graph capture
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer.seconds = 0.0
    sync(device)
    start = time.perf_counter()
    steps(args.steps)
    sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    imagination_seconds = timer.seconds / args.steps
    peak_gb = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    imagined = batch.act.size(0) * config.actor_critic.imagination_horizon
    return {
        "component": name,
        "variant": args.variant,
        "batch": f"{batch.act.size(0)}×{batch.act.size(1)}",
        "ms_per_step": 1000 * seconds,
        "peak_gpu_gb": peak_gb,
        "kernel_launches": kernel_launches(lambda: steps(1), device),
        "host_syncs": host_syncs(lambda: steps(1), device),
        "imagined_per_s": imagined / imagination_seconds if name == "actor_critic" else None,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"{name}, torch {torch.__version__}")
    header = ("component", "variant", "batch", "ms/step", "peak GPU GB", "launches/step", "syncs/step",
              "imagined/s")  # fmt: skip
    print(" | ".join(header))
    for row in rows:
        cells = (
            row["component"], row["variant"], row["batch"], fmt(row["ms_per_step"], ".1f"),
            fmt(row["peak_gpu_gb"], ".2f"), str(row["kernel_launches"]), str(row["host_syncs"]),
            fmt(row["imagined_per_s"], ",.0f"),
        )  # fmt: skip
        print(" | ".join(cells), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--components", nargs="+", choices=COMPONENTS, default=list(COMPONENTS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the paper's")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per (component, variant)")
    parser.add_argument("--component", help=argparse.SUPPRESS)  # one child process
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    if args.component is not None:
        print(json.dumps(run(args)))
        return
    rows = []
    for component in args.components:
        for variant in args.variants:
            command = [sys.executable, "-m", "benchmarks.gpu", "--component", component, "--variant", variant]
            command += ["--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup)]
            if args.batch_size is not None:
                command += ["--batch-size", str(args.batch_size)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"{component} {variant}: timed out after {args.timeout} s", flush=True)
                continue
            if done.returncode != 0:
                print(f"{component} {variant} failed:\n{done.stderr[-3000:]}", flush=True)
                continue
            rows.append(json.loads(done.stdout.splitlines()[-1]))
            print_table(rows[-1:])
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
