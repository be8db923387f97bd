"""A writer killed with SIGKILL at random moments never costs a committed episode."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from storage_helpers import assert_same_episode, crash_test_episode

from pipelines.storage import EpisodeStore, EpisodeStoreWriter, StoreAttributes, ZarrEpisodeDataset
from pipelines.storage.episode_store import FIELDS


def write_until_killed(url: str, ready: Any) -> None:
    writer = EpisodeStoreWriter.open(url)
    episode_id = writer.num_parts
    ready.set()
    while True:
        writer.append(crash_test_episode(episode_id), episode_id=episode_id)
        episode_id += 1


def run_writer_until_killed(url: str, delay: float) -> None:
    """A writer process, SIGKILLed ``delay`` seconds after its store is open.

    Forked from this (already initialised) interpreter: a fresh interpreter would spend seconds
    importing torch before its first write. zarr resets its I/O thread in a forked child.
    """
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    child = context.Process(target=write_until_killed, args=(url, ready), daemon=True)
    child.start()
    try:
        assert ready.wait(timeout=60), "the writer did not start"
        time.sleep(delay)
    finally:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    assert child.exitcode == -signal.SIGKILL


def state_on_disk(url: str) -> tuple[dict[str, int], list[Path]]:
    """Array lengths, and the temporaries of interrupted local writes (an object store has none:
    every put is atomic)."""
    group = zarr.open_group(url, mode="r")
    shapes = {name: group[name].shape[0] for name in (*FIELDS, "return", "index")}  # type: ignore[union-attr]
    if "://" in url:
        return shapes, []
    return shapes, [p for p in Path(url).rglob("*") if p.name.endswith(".partial")]


def settle(url: str) -> None:
    """Wait for requests the killed writer had fully sent: the test's S3 server runs in this
    process and may still apply them (as S3 itself may, after a writer dies)."""
    state = state_on_disk(url)
    for _ in range(50):
        time.sleep(0.1)
        previous, state = state, state_on_disk(url)
        if state == previous:
            return
    raise AssertionError(f"{url} kept changing after its writer was killed")


@pytest.mark.parametrize(
    ("where", "kills"), [("local", 10), ("s3", 5), pytest.param("local", 40, marks=pytest.mark.slow)]
)
def test_sigkill_during_appends(
    request: pytest.FixtureRequest, tmp_path: Path, where: str, kills: int
) -> None:
    url = f"{request.getfixturevalue('s3_bucket')}/0.zarr" if where == "s3" else str(tmp_path / "0.zarr")
    EpisodeStoreWriter.create(url, StoreAttributes("crash", seed=0, iteration=0, policy_version=0)).close()
    rng = np.random.default_rng(0)
    verified, torn_kills = 0, 0
    for _ in range(kills):
        run_writer_until_killed(url, delay=float(rng.uniform(0.0, 0.6)))
        if where == "s3":
            settle(url)

        # Before any recovery, readers see exactly the committed episodes, bit for bit.
        store = EpisodeStore(url)
        committed = len(store.index)
        assert committed >= verified
        for episode_id in range(verified, committed):
            assert_same_episode(store.read_part(episode_id), crash_test_episode(episode_id))
        dataset = ZarrEpisodeDataset([url])
        assert dataset.num_episodes == committed
        assert dataset.num_frames == store.num_frames
        shapes, partials = state_on_disk(url)
        torn_kills += any(n > store.num_frames for n in (shapes[f] for f in FIELDS)) or bool(partials)

        # Reopening for writing truncates to the committed size and sweeps the temporaries.
        writer = EpisodeStoreWriter.open(url)
        shapes, partials = state_on_disk(url)
        assert partials == []
        assert all(shapes[f] == store.num_frames for f in FIELDS), shapes
        assert shapes["index"] == shapes["return"] == committed

        # ... and appending continues where the committed data ends.
        writer.append(crash_test_episode(committed), episode_id=committed)
        writer.close()  # the next writer process takes the store's lock
        verified = committed + 1

    store = EpisodeStore(url)
    assert len(store.index) == verified > kills
    for episode_id in (0, verified // 2, verified - 1):
        assert_same_episode(store.read_part(episode_id), crash_test_episode(episode_id))
    # Kills at random moments land inside an append most of the time; the test is only
    # meaningful if some did.
    assert torn_kills >= 1, "no kill interrupted a write"
    print(f"{kills} kills, {torn_kills} interrupted a write, {verified} episodes committed")
