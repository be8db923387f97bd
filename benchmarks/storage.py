"""Episode storage benchmark: batch load time, bytes per stored step, reader memory.

    python benchmarks/storage.py                     # 100k Crafter frames (generated once, cached)
    python benchmarks/storage.py --frames 20000      # quicker
    python benchmarks/storage.py --skip-rss          # without the 1M-frame memory check

The Crafter store holds real frames from ``crafter.Env`` driven by uniformly random actions (the
data of the paper's first epoch). It is generated once and cached under ``--cache-dir`` (a temp
folder by default): generation takes ~3 ms per step on one core.

Reference points (the reference implementation, docs/method.md §2): ~0.2 s per world-model batch, 18.2 KB
per stored step on disk, 12.3 KB of raw observation per step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from iris_core.data.sampler import SegmentSampler, load_batch
from iris_core.data.structures import Episode, Segment, SegmentId
from pipelines.storage import EpisodeStoreWriter, StoreAttributes, ZarrEpisodeDataset
from pipelines.storage.dataset import SEGMENT_FIELDS
from pipelines.storage.episode_store import array_of, from_stored_frames
from pipelines.storage.tables import CRAFTER_ACHIEVEMENTS

RAW_OBS_BYTES = 3 * 64 * 64
REFERENCE_STEP_BYTES = 18.2e3
REFERENCE_WM_BATCH_S = 0.2
BATCHES = {"world model (32 x 21)": (32, 21, True), "actor-critic (86 x 6)": (86, 6, False)}


# ---------------------------------------------------------------------------------------------
# Stores
# ---------------------------------------------------------------------------------------------


def generate_crafter_store(url: str, frames: int, seed: int = 0) -> None:
    """Random-policy Crafter episodes until ``frames`` steps; the last one may be unfinished."""
    import crafter  # only the benchmark needs the game

    env = crafter.Env(seed=seed)
    rng = np.random.default_rng(seed)
    writer = EpisodeStoreWriter.create(
        url, StoreAttributes("crafter", seed=seed, iteration=0, policy_version=0, with_achievements=True)
    )
    episode_id, written = 0, 0
    started = time.perf_counter()
    while written < frames:
        obs, info = env.reset(), {}
        steps: list[tuple[np.ndarray, int, float, bool, bool]] = []
        done = False
        while not done and written + len(steps) < frames:
            act = int(rng.integers(env.action_space.n))
            next_obs, rew, done, info = env.step(act)
            steps.append((obs.transpose(2, 0, 1), act, rew, done, done and info["discount"] != 0))
            obs = next_obs
        obs_, act_, rew_, end_, trunc_ = zip(*steps, strict=True)
        episode = Episode(
            obs=np.stack(obs_),
            act=np.array(act_, np.int64),
            rew=np.array(rew_, np.float32),
            end=np.array(end_, np.uint8),
            trunc=np.array(trunc_, np.uint8),
            info={"achievements": {name: int(info["achievements"][name]) for name in CRAFTER_ACHIEVEMENTS}},
        )
        writer.append(episode, episode_id=episode_id)
        episode_id += 1
        written += len(episode)
        if episode_id % 50 == 0:
            rate = written / (time.perf_counter() - started)
            print(f"  generated {written}/{frames} Crafter steps ({rate:.0f} steps/s)", file=sys.stderr)


def generate_synthetic_store(url: str, frames: int, episode_length: int = 200) -> None:
    """A large store written in bulk (same layout and commit order as ``append``), with cheap,
    highly compressible frames: only its size matters for the memory check."""
    writer = EpisodeStoreWriter.create(
        url, StoreAttributes("synthetic", seed=0, iteration=0, policy_version=0)
    )
    del writer
    group = zarr.open_group(url, mode="r+")
    arrays = {
        name: array_of(group, name) for name in ("obs", "act", "rew", "end", "trunc", "return", "index")
    }
    for name in ("obs", "act", "rew", "end", "trunc"):
        arrays[name].resize((frames, *arrays[name].shape[1:]))
    step = 4096
    for a in range(0, frames, step):
        b = min(frames, a + step)
        t = np.arange(a, b)
        arrays["obs"][a:b] = np.broadcast_to(
            (t % 251 + 1).astype(np.uint8)[:, None, None, None], (b - a, 64, 64, 3)
        )
        arrays["act"][a:b] = t % 17
        arrays["rew"][a:b] = (t % 7 == 0).astype(np.float32)
    starts = np.arange(0, frames, episode_length)
    lengths = np.minimum(episode_length, frames - starts)
    ends = np.zeros(frames, np.uint8)
    ends[starts + lengths - 1] = 1
    arrays["end"][:] = ends
    arrays["trunc"][:] = 0
    returns = np.add.reduceat((np.arange(frames) % 7 == 0).astype(np.float64), starts)
    arrays["return"].resize((len(starts),))
    arrays["return"][:] = returns
    index = np.stack(
        [np.arange(len(starts)), np.zeros_like(starts), starts, lengths, np.ones_like(starts)], 1
    )
    arrays["index"].resize(index.shape)
    arrays["index"][:] = index  # last: the commit


def cached_store(cache_dir: Path, name: str, build: object, frames: int) -> str:
    url = str(cache_dir / f"{name}-{frames}.zarr")
    done = cache_dir / f"{name}-{frames}.done"
    if not done.exists():
        if Path(url).exists():
            import shutil

            shutil.rmtree(url)  # an interrupted earlier generation of this benchmark's own cache
        print(f"building {url} ...", file=sys.stderr)
        build(url, frames)  # type: ignore[operator]
        done.touch()
    return url


def disk_bytes(url: str) -> int:
    return sum(p.stat().st_size for p in Path(url).rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# Batch loading: the dataset's async path, and two alternatives for comparison
# ---------------------------------------------------------------------------------------------


def load_with(
    pool: ThreadPoolExecutor | None, dataset: ZarrEpisodeDataset, ids: list[SegmentId]
) -> list[Segment]:
    """Same result as ``dataset.load_segments``, with synchronous zarr reads in a thread pool
    (or one after another without a pool)."""
    reads = dataset.plan_reads(ids)
    arrays = _sync_arrays(dataset)
    jobs = [(name, r) for name in SEGMENT_FIELDS for r in reads]

    def fetch(job: tuple[str, object]) -> np.ndarray:
        name, r = job
        values = np.asarray(arrays[(r.store.url, name)][r.store_start : r.store_stop])  # type: ignore[attr-defined]
        return from_stored_frames(values) if name == "obs" else values

    results = iter(pool.map(fetch, jobs) if pool else map(fetch, jobs))
    L, B = ids[0].stop - ids[0].start, len(ids)
    out: dict[str, np.ndarray] = {
        "obs": np.zeros((B, L, 3, 64, 64), np.uint8),
        "act": np.zeros((B, L), np.int64),
        "rew": np.zeros((B, L), np.float32),
        "end": np.zeros((B, L), np.uint8),
    }
    mask = np.zeros((B, L), bool)
    for name in SEGMENT_FIELDS:
        for r in reads:
            out[name][r.segment, r.lo : r.hi] = next(results)
            mask[r.segment, r.lo : r.hi] = True
    return [
        Segment(out["obs"][k], out["act"][k], out["rew"][k], out["end"][k], mask[k], s)
        for k, s in enumerate(ids)
    ]


_ARRAYS: dict[tuple[str, str], zarr.Array[Any]] = {}


def _sync_arrays(dataset: ZarrEpisodeDataset) -> dict[tuple[str, str], zarr.Array[Any]]:
    for store in dataset.stores:
        for name in SEGMENT_FIELDS:
            if (store.url, name) not in _ARRAYS:
                _ARRAYS[(store.url, name)] = zarr.open_array(store.url, path=name, mode="r")
    return _ARRAYS


def time_batches(dataset: ZarrEpisodeDataset, num_batches: int, method: str) -> dict[str, float]:
    pool = ThreadPoolExecutor(16) if method == "threads" else None
    timings = {}
    for label, (B, L, beyond_end) in BATCHES.items():
        sampler = SegmentSampler(L, B, priority_alpha=5.0, can_sample_beyond_end=beyond_end, seed=1)
        lengths = dataset.episode_lengths()
        batches = [sampler.sample(lengths) for _ in range(num_batches + 2)]
        seconds = []
        for ids in batches:
            start = time.perf_counter()
            if method == "async":
                load_batch(dataset, ids)
            else:
                load_with(pool, dataset, ids)
            seconds.append(time.perf_counter() - start)
        timings[label] = float(np.median(seconds[2:]))  # the first two warm caches and threads
    return timings


# ---------------------------------------------------------------------------------------------
# Reader memory, measured in a fresh process per store
# ---------------------------------------------------------------------------------------------


def rss_child(url: str) -> None:
    """RSS growth over the interpreter's: after opening, then over 200 world-model batches (the
    allocator keeps batch and chunk buffers around for a while, so the median and the maximum)."""
    import psutil

    process = psutil.Process()
    before = process.memory_info().rss
    dataset = ZarrEpisodeDataset([url])
    opened = process.memory_info().rss
    sampler = SegmentSampler(
        21, 32, priority_alpha=5.0, can_sample_beyond_end=True, seed=0, update_counts=True
    )
    lengths = dataset.episode_lengths()
    samples = []
    for i in range(200):
        load_batch(dataset, sampler.sample(lengths))
        if i >= 20:
            samples.append(process.memory_info().rss - before)
    mb = 2**20
    print(json.dumps({"open": (opened - before) / mb, "median": float(np.median(samples)) / mb,
                      "max": max(samples) / mb, "cache": dataset.step_cache.nbytes / mb}))  # fmt: skip


def measure_rss(url: str) -> dict[str, float]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    )
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", url], check=True, capture_output=True, env=env
    )
    result: dict[str, float] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=100_000, help="Crafter steps in the benchmark store")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per batch shape")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "iris-storage-benchmark"
    )
    parser.add_argument("--skip-rss", action="store_true", help="skip the 10k vs 1M reader-memory check")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    crafter_url = cached_store(args.cache_dir, "crafter", generate_crafter_store, args.frames)
    dataset = ZarrEpisodeDataset([crafter_url])
    print(f"\nmachine load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
          f"(1/5/15 min) on {os.cpu_count()} cores")  # fmt: skip
    print(f"store: {dataset.num_frames} Crafter steps in {dataset.num_episodes} episodes\n")

    rows = []
    methods = {
        "async": "async gather + step cache",
        "threads": "16 threads, no step cache",
        "sequential": "one read at a time, no step cache",
    }
    for method, description in methods.items():
        for label, seconds in time_batches(dataset, args.batches, method).items():
            rows.append((f"{label}, {description}", f"{seconds * 1e3:.0f} ms/batch"))
    rows.append(("world-model batch, reference", f"{REFERENCE_WM_BATCH_S * 1e3:.0f} ms/batch"))

    stored = disk_bytes(crafter_url) / dataset.num_frames
    obs_only = disk_bytes(str(Path(crafter_url) / "obs")) / dataset.num_frames
    rows += [
        ("bytes per stored step (all arrays)", f"{stored / 1e3:.2f} KB"),
        ("  of which observations", f"{obs_only / 1e3:.2f} KB"),
        ("raw observation per step", f"{RAW_OBS_BYTES / 1e3:.2f} KB ({RAW_OBS_BYTES / stored:.1f}x ours)"),
        (
            "reference per stored step",
            f"{REFERENCE_STEP_BYTES / 1e3:.1f} KB ({REFERENCE_STEP_BYTES / stored:.1f}x)",
        ),
    ]

    if not args.skip_rss:
        for frames in (10_000, 1_000_000):
            url = cached_store(args.cache_dir, "synthetic", generate_synthetic_store, frames)
            rss = measure_rss(url)
            value = f"{rss['open']:.1f} | {rss['median']:.0f}, {rss['max']:.0f} | {rss['cache']:.1f} MB"
            rows.append((f"reader RSS, {frames:>9,} steps: open | batches median, max | step cache", value))

    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  value")
    print("-" * (width + 30))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
