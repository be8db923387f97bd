"""A writer reopening a store verifies the checksums of its committed chunks before appending."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from storage_helpers import make_episode

from pipelines.storage import EpisodeStore, EpisodeStoreWriter, StoreAttributes, StoreCorruptedError

LENGTHS = [40, 33, 70]  # 143 steps: obs chunks 0..4 (the last one partial), one chunk per step array


def write_store(url: str) -> None:
    with EpisodeStoreWriter.create(url, StoreAttributes("crafter", 0, 1, 0)) as writer:
        for i, n in enumerate(LENGTHS):
            writer.append(make_episode(n, seed=i), episode_id=i)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime (ns)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "chunk",
    [
        "obs/c/1/0/0/0",  # a full chunk well under the committed tail
        "obs/c/4/0/0/0",  # the tail's own chunk, which the next append would rewrite
        "rew/c/0",
        "index/c/0/0",
    ],
)
def test_a_corrupt_committed_chunk_refuses_the_append_and_writes_nothing(tmp_path: Path, chunk: str) -> None:
    url = str(tmp_path / "1.zarr")
    write_store(url)
    flip_a_byte(Path(url) / chunk)
    before = snapshot(tmp_path)

    with pytest.raises(StoreCorruptedError) as caught:
        EpisodeStoreWriter.open(url)
    message = str(caught.value)
    assert "\n" not in message
    if chunk.startswith("index"):  # the index is decoded whenever the store is opened
        assert re.match(rf"{re.escape(url)}: cannot read the index", message), message
    else:
        assert re.match(rf"{re.escape(url)}: chunk {re.escape(chunk)} is corrupt", message), message
    assert snapshot(tmp_path) == before  # no lock file, no truncation, no repair


def test_an_intact_store_reopens_and_appends(tmp_path: Path) -> None:
    url = str(tmp_path / "1.zarr")
    write_store(url)
    EpisodeStore(url).verify_chunks()
    with EpisodeStoreWriter.open(url) as writer:
        writer.append(make_episode(5, seed=9), episode_id=3)
    assert EpisodeStore(url).num_frames == sum(LENGTHS) + 5


def test_damage_beyond_the_committed_tail_is_not_checked(tmp_path: Path) -> None:
    """A chunk past the committed steps (left by a killed writer) is dropped, not reported."""
    url = str(tmp_path / "1.zarr")
    write_store(url)
    with EpisodeStoreWriter.open(url) as writer:
        writer.append(make_episode(64, seed=7), episode_id=3)  # frames 143..206: obs chunks 4..6
    group = zarr.open_group(url, mode="r+")
    index = group["index"]
    assert isinstance(index, zarr.Array)
    index[3] = np.zeros(5, dtype=np.int64)  # un-commit the last part, as a kill before its index row
    flip_a_byte(Path(url) / "obs" / "c" / "6" / "0" / "0" / "0")  # only uncommitted frames
    with EpisodeStoreWriter.open(url) as writer:
        assert writer.num_frames == sum(LENGTHS)
