"""Costs of running the campaign as DVC stages, apart from the work of the stages themselves.

(a) `dvc status`, `dvc dag` and `dvc repro --dry init` on params.yaml files of 10, 100 and 1,000
    iterations (the quickstart preset with ``common.epochs=N``; no stage runs, every stage is new);
(b) start-up of one stage process: wall time of `iris stage init` against the time the stage
    function itself reports (``init/wall_seconds``);
(c) start-up of a training stage whose manifest lists 1,000 small stores: the time until its
    dataset is open (``ZarrEpisodeDataset.from_manifest``), in a fresh process.

Run: ``python benchmarks/pipeline.py [--iterations 10 100 1000] [--stores 1000]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def environment(site_cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(site_cache),
        MLFLOW_DISABLE_TELEMETRY="true",
        GIT_AUTHOR_NAME="bench",
        GIT_AUTHOR_EMAIL="bench@example.invalid",
        GIT_COMMITTER_NAME="bench",
        GIT_COMMITTER_EMAIL="bench@example.invalid",
    )
    return env


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    elapsed, _, result = cpu_timed(args, cwd, env)
    return elapsed, result


def cpu_timed(
    args: list[str], cwd: Path, env: dict[str, str]
) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Wall seconds, CPU seconds (user + system, the command and its children) and the result.

    On a shared machine the CPU seconds are the steadier figure: they grow little with the load.
    """
    cpu = children_cpu_seconds()
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    cpu = children_cpu_seconds() - cpu
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return elapsed, cpu, result


def workspace(root: Path, env: dict[str, str], overrides: list[str]) -> Path:
    from pipelines.config import write_params

    root.mkdir(parents=True)
    timed(["git", "init", "-q"], root, env)
    timed(["dvc", "init", "-q"], root, env)
    timed(["dvc", "config", "core.analytics", "false"], root, env)
    shutil.copy(PROJECT / "dvc.yaml", root / "dvc.yaml")
    write_params(root / "params.yaml", overrides=overrides)
    return root


def bench_dvc(base: Path, env: dict[str, str], sizes: list[int]) -> None:
    """A plain `dvc repro --dry` stops at the first stage whose inputs do not exist yet (collect@1
    before init ran), so the dry run measured is that of one stage, `init`, as the flow runs one
    `dvc repro <stage>` per task: it still loads and checks the whole pipeline."""
    print("(a) dvc on N iterations (quickstart, nothing run yet): wall s / CPU s")
    header = ("iterations", "stages", "dvc status", "dvc dag --dot", "repro --dry init")
    print(f"{header[0]:>10} {header[1]:>7} {header[2]:>15} {header[3]:>15} {header[4]:>17}")
    for n in sizes:
        ws = workspace(base / f"iterations-{n}", env, ["params=quickstart", f"common.epochs={n}"])
        status_s, status_cpu, status = cpu_timed(["dvc", "status"], ws, env)
        stages = sum(1 for line in status.stdout.splitlines() if line and not line[0].isspace())
        # `dvc dag --dot` (Graphviz text, what large graphs are rendered from): the terminal drawing
        # of plain `dvc dag` lays out the whole graph and is impractical beyond a few hundred stages.
        dag_s, dag_cpu, _ = cpu_timed(["dvc", "dag", "--dot"], ws, env)
        dry_s, dry_cpu, _ = cpu_timed(["dvc", "repro", "--dry", "init"], ws, env)
        cells = [
            f"{wall:.1f} / {cpu:.1f}"
            for wall, cpu in ((status_s, status_cpu), (dag_s, dag_cpu), (dry_s, dry_cpu))
        ]
        print(f"{n:>10} {stages:>7} {cells[0]:>15} {cells[1]:>15} {cells[2]:>17}", flush=True)


def bench_startup(base: Path, env: dict[str, str]) -> None:
    import json

    print("(b) stage process start-up: `iris stage init`")
    ws = base / "startup"
    ws.mkdir()
    from pipelines.config import write_params

    write_params(ws / "params.yaml", overrides=["params=quickstart"])
    for attempt in ("first (creates mlflow.db)", "second"):
        wall, _ = timed(["iris", "stage", "init"], ws, env)
        code = (
            "import json, sys; from pathlib import Path; from pipelines.stages.runner import run_stage, "
            "parse_stage, no_tracking; r = run_stage(Path(sys.argv[1]), parse_stage('init'), "
            "tracking=no_tracking); print(json.dumps(r.metrics))"
        )
        inner_wall, result = timed([sys.executable, "-c", code, str(ws)], ws, env)
        function_s = json.loads(result.stdout.strip().splitlines()[-1])["init/wall_seconds"]
        print(
            f"  {attempt}: `iris stage init` {wall:.1f} s; the stage function {function_s:.1f} s "
            f"(a bare python process running it without tracking: {inner_wall:.1f} s)",
            flush=True,
        )
    imports_s, _ = timed(
        [
            sys.executable,
            "-c",
            "import pipelines.stages.train, pipelines.stages.tracking, pipelines.tracking",
        ],
        ws,
        env,
    )
    print(f"  importing the stage and tracking modules alone: {imports_s:.1f} s")


def bench_manifest(base: Path, env: dict[str, str], num_stores: int) -> None:
    import numpy as np

    from iris_core.data.structures import Episode
    from pipelines.storage import DatasetManifest, EpisodeStoreWriter, StoreAttributes, write_manifest

    print(f"(c) opening the dataset of a manifest listing {num_stores} stores (one 8-step episode each)")
    folder = base / "stores"
    (folder / "episodes").mkdir(parents=True)
    (folder / "manifests").mkdir()
    manifest = DatasetManifest()
    started = time.perf_counter()
    for i in range(num_stores):
        attributes = StoreAttributes(
            env_id="bench",
            seed=0,
            iteration=i + 1,
            policy_version=i,
            obs_shape=(3, 8, 8),
            with_achievements=False,
        )
        writer = EpisodeStoreWriter.create(str(folder / "episodes" / f"{i + 1}.zarr"), attributes)
        with writer:
            t = 8
            episode = Episode(
                obs=np.zeros((t, 3, 8, 8), np.uint8),
                act=np.zeros(t, np.int64),
                rew=np.zeros(t, np.float32),
                end=np.eye(1, t, t - 1, dtype=np.uint8)[0],
                trunc=np.zeros(t, np.uint8),
            )
            writer.append(episode, episode_id=i, part=0)
        manifest = manifest.with_store(f"../episodes/{i + 1}.zarr")
    write_manifest(str(folder / "manifests" / "m.json"), manifest)
    print(f"  writing them: {time.perf_counter() - started:.1f} s")
    code = (
        "import sys, time; t = time.perf_counter(); from pipelines.storage import ZarrEpisodeDataset; "
        "t1 = time.perf_counter(); d = ZarrEpisodeDataset.from_manifest(sys.argv[1]); "
        "print(d.num_episodes, t1 - t, time.perf_counter() - t1)"
    )
    _, result = timed([sys.executable, "-c", code, str(folder / "manifests" / "m.json")], folder, env)
    episodes, import_s, open_s = result.stdout.split()
    print(f"  fresh process: import {float(import_s):.1f} s, open {episodes} episodes {float(open_s):.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, nargs="*", default=[10, 100, 1000])
    parser.add_argument("--stores", type=int, default=1000)
    parser.add_argument("--skip", nargs="*", default=[], choices=["dvc", "startup", "manifest"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        base = Path(tmp)
        env = environment(base / "dvc-site-cache")
        if "dvc" not in args.skip:
            bench_dvc(base, env, args.iterations)
        if "startup" not in args.skip:
            bench_startup(base, env)
        if "manifest" not in args.skip:
            bench_manifest(base, env, args.stores)


if __name__ == "__main__":
    main()
