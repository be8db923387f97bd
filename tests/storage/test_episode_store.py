"""Round trips through one store, the table schema, and errors that name the store."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr
from storage_helpers import assert_same_episode, make_episode

from iris_core.data.sampler import SegmentSampler
from iris_core.data.structures import Episode, SegmentId, make_segment
from pipelines.storage import (
    EpisodeStore,
    EpisodeStoreWriter,
    SchemaVersionError,
    StoreAttributes,
    StoreCorruptedError,
    StoreError,
    StoreNotFoundError,
    TableValidationError,
    ZarrEpisodeDataset,
)
from pipelines.storage.episode_store import FRAME_CHUNK, STEP_CHUNK, ChunkCache
from pipelines.storage.tables import CRAFTER_ACHIEVEMENTS

LENGTHS = [1, 31, 32, 33, 70, 5]


def attributes(achievements: bool = False) -> StoreAttributes:
    return StoreAttributes("crafter" if achievements else "breakout", seed=3, iteration=2, policy_version=1,
                           with_achievements=achievements)  # fmt: skip


@pytest.fixture(params=["local", "memory", "s3"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "2.zarr")
    if request.param == "s3":
        return f"{request.getfixturevalue('s3_bucket')}/episodes/2.zarr"
    return f"memory://{uuid.uuid4().hex}/2.zarr"


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def write_store(url: str, achievements: bool = False) -> list:
    writer = EpisodeStoreWriter.create(url, attributes(achievements))
    episodes = [
        make_episode(n, seed=i, finished=i != len(LENGTHS) - 1, truncated=i == 2, achievements=achievements)
        for i, n in enumerate(LENGTHS)
    ]
    for i, episode in enumerate(episodes):
        writer.append(episode, episode_id=i)
    return episodes


@pytest.mark.parametrize("achievements", [False, True])
def test_round_trip(url: str, achievements: bool) -> None:
    episodes = write_store(url, achievements)
    store = EpisodeStore(url)
    assert store.attributes == attributes(achievements)
    assert store.num_frames == sum(LENGTHS)
    assert [p.length for p in store.parts] == LENGTHS
    assert [p.finished for p in store.parts] == [True] * (len(LENGTHS) - 1) + [False]
    for i, episode in enumerate(episodes):
        back = store.read_part(i)
        assert_same_episode(back, episode)
        assert back.act.dtype == np.int64 and back.rew.dtype == np.float32 and back.obs.dtype == np.uint8

    table = store.table()
    assert table["length"].tolist() == LENGTHS
    np.testing.assert_allclose(table["return"], [e.episode_return for e in episodes])
    assert (table["iteration"] == 2).all() and (table["policy_version"] == 1).all()
    if achievements:
        for name in CRAFTER_ACHIEVEMENTS:
            assert table[f"achievement_{name}"].tolist() == [e.info["achievements"][name] for e in episodes]
    else:
        assert not any(c.startswith("achievement_") for c in table.columns)


def test_reopen_continues_appending(url: str) -> None:
    episodes = write_store(url)
    writer = EpisodeStoreWriter.open(url)
    extra = make_episode(40, seed=99)
    stored = writer.append(extra, episode_id=len(episodes))
    assert stored.start == sum(LENGTHS) and stored.part == 0
    store = EpisodeStore(url)
    assert_same_episode(store.read_part(len(episodes)), extra)
    assert_same_episode(store.read_part(0), episodes[0])


def test_empty_store(url: str) -> None:
    EpisodeStoreWriter.create(url, attributes())
    store = EpisodeStore(url)
    assert store.num_frames == 0 and store.parts == [] and len(store.table()) == 0
    dataset = ZarrEpisodeDataset([url])
    assert dataset.num_episodes == 0 and dataset.load_segments([]) == []


def test_create_refuses_an_existing_store(url: str) -> None:
    write_store(url)
    with pytest.raises(StoreError, match="already exists"):
        EpisodeStoreWriter.create(url, attributes())
    assert EpisodeStore(url).num_frames == sum(LENGTHS)


def test_write_time_validation_rejects_and_writes_nothing(url: str) -> None:
    write_store(url, achievements=True)
    writer = EpisodeStoreWriter.open(url)
    bad = make_episode(10, seed=1, achievements=True)
    bad.info["achievements"]["collect_wood"] = -1  # type: ignore[index]
    with pytest.raises(TableValidationError, match=re.escape(url)):
        writer.append(bad, episode_id=6)
    with pytest.raises(TableValidationError, match="22 Crafter achievements"):
        writer.append(make_episode(10, seed=1), episode_id=6)
    nan_return = make_episode(10, seed=1, achievements=True)
    nan_return.rew[3] = np.nan
    with pytest.raises(TableValidationError, match=re.escape(url)):
        writer.append(nan_return, episode_id=6)
    early_end = make_episode(10, seed=1, achievements=True)
    early_end.end[4] = 1
    with pytest.raises(StoreError, match="end before its last step"):
        writer.append(early_end, episode_id=6)
    store = EpisodeStore(url)
    assert store.num_frames == sum(LENGTHS)
    assert all(zarr.open_group(url, mode="r")[name].shape[0] == sum(LENGTHS) for name in ("obs", "act"))


# ---------------------------------------------------------------------------------------------
# Errors that name the store, and delete nothing
# ---------------------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.zarr")
    for opener in (EpisodeStore, EpisodeStoreWriter.open, ZarrEpisodeDataset.from_manifest):
        with pytest.raises(StoreNotFoundError, match=r"nope\.zarr"):
            opener(missing)
    assert not os.path.exists(missing)
    with pytest.raises(StoreNotFoundError, match="missing-bucket"):
        EpisodeStore("memory://missing-bucket/0.zarr")


def test_newer_schema_version(tmp_path: Path) -> None:
    url = str(tmp_path / "0.zarr")
    write_store(url)
    zarr.open_group(url, mode="r+").attrs["schema_version"] = 99
    before = files(tmp_path)
    for opener in (EpisodeStore, EpisodeStoreWriter.open, lambda u: ZarrEpisodeDataset([u])):
        with pytest.raises(SchemaVersionError, match=rf"{re.escape(url)}: written with schema version 99"):
            opener(url)
    assert files(tmp_path) == before


def obs_chunk_files(url: str) -> list[Path]:
    return sorted(p for p in (Path(url) / "obs").rglob("*") if p.is_file() and p.name != "zarr.json")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_or_truncated_chunk(tmp_path: Path, damage: str) -> None:
    url = str(tmp_path / "0.zarr")
    write_store(url)
    chunk = Path(url) / "obs" / "c" / "1" / "0" / "0" / "0"  # frames 32..63
    raw = chunk.read_bytes()
    if damage == "flip":
        chunk.write_bytes(
            raw[: len(raw) // 2] + bytes([raw[len(raw) // 2] ^ 0xFF]) + raw[len(raw) // 2 + 1 :]
        )
    else:
        chunk.write_bytes(raw[: len(raw) // 3])
    before = files(tmp_path)

    dataset = ZarrEpisodeDataset([url])
    # episode 3 (33 frames) starts at frame 64: unaffected; episode 2 (frames 32..63) is not.
    dataset.load_segments([SegmentId(3, 0, 21)])
    with pytest.raises(StoreCorruptedError, match=rf"{re.escape(url)}: cannot read 'obs'\[32:53\]"):
        dataset.load_segments([SegmentId(2, 0, 21)])
    with pytest.raises(StoreCorruptedError, match=re.escape(url)):
        EpisodeStore(url).read_part(2)
    assert files(tmp_path) == before  # nothing deleted or repaired behind the user's back


@pytest.mark.parametrize("array", ["obs", "rew", "trunc", "return"])  # trunc: a chunk of zeros
def test_deleted_chunk_is_named_not_read_as_zeros(tmp_path: Path, array: str) -> None:
    url = str(tmp_path / "0.zarr")
    write_store(url)
    EpisodeStore(url)  # intact: opens
    chunk = Path(url) / array / "c" / "0"
    chunk = next(p for p in [chunk, *chunk.rglob("*")] if p.is_file())
    chunk.unlink()
    before = files(tmp_path)
    key = chunk.relative_to(url).as_posix()
    with pytest.raises(StoreCorruptedError, match=rf"{re.escape(url)}: chunks .* missing: {re.escape(key)}"):
        EpisodeStore(url)
    with pytest.raises(StoreCorruptedError, match=re.escape(url)):
        ZarrEpisodeDataset([url])
    assert files(tmp_path) == before


def test_version_1_stores_may_lack_chunks_of_zeros(tmp_path: Path) -> None:
    """Schema version 1 did not write all-zero chunks: such stores still open and read zeros."""
    url = str(tmp_path / "0.zarr")
    write_store(url)
    zarr.open_group(url, mode="r+").attrs["schema_version"] = 1
    (Path(url) / "trunc" / "c" / "0").unlink()
    store = EpisodeStore(url)
    assert store.attributes.schema_version == 1
    assert not store.read_part(0).trunc.any()


def test_arrays_shorter_than_index(tmp_path: Path) -> None:
    url = str(tmp_path / "0.zarr")
    write_store(url)
    zarr.open_group(url, mode="r+")["rew"].resize((50,))  # type: ignore[union-attr]
    before = files(tmp_path)
    with pytest.raises(
        StoreCorruptedError, match=rf"{re.escape(url)}: 'rew' holds 50 steps, the index commits 172"
    ):
        EpisodeStore(url)
    with pytest.raises(StoreCorruptedError, match=re.escape(url)):
        EpisodeStoreWriter.open(url)  # refuses to "recover" what would lose committed data
    assert files(tmp_path) == before


@pytest.mark.parametrize("achievements", [False, True])
def test_invalid_table_on_read(tmp_path: Path, achievements: bool) -> None:
    url = str(tmp_path / "0.zarr")
    write_store(url, achievements)
    group = zarr.open_group(url, mode="r+")
    if achievements:
        group["achievements"][1, 4] = -7  # type: ignore[index]
    else:
        group["return"][2] = np.inf  # type: ignore[index]
    store = EpisodeStore(url)  # frames stay readable
    with pytest.raises(TableValidationError, match=rf"{re.escape(url)}: episode table fails validation"):
        store.table()
    with pytest.raises(TableValidationError, match=re.escape(url)):
        ZarrEpisodeDataset([url]).episode_table()


def test_reads_touch_only_covered_chunks(tmp_path: Path) -> None:
    url = str(tmp_path / "0.zarr")
    episodes = write_store(url)
    # Damage every obs chunk except chunk 2 (frames 64..95): a read of any other chunk would fail.
    for chunk in obs_chunk_files(url):
        if chunk.parts[-4] != "2":
            chunk.write_bytes(b"garbage")
    # Episode 3 occupies frames 64..96; its first 32 frames lie in chunk 2.
    segment_id = SegmentId(3, -5, 27)
    (segment,) = ZarrEpisodeDataset([url]).load_segments([segment_id])
    np.testing.assert_array_equal(segment.obs, make_segment(episodes[3], segment_id).obs)
    assert FRAME_CHUNK == 32


def test_chunk_cache_is_bounded_and_least_recently_used() -> None:
    cache = ChunkCache(max_bytes=3 * 800)
    block = np.zeros(100, np.int64)  # 800 bytes
    for c in range(4):
        cache.put(("s", "act", c), block)
    assert cache.nbytes == 2400 and cache.get(("s", "act", 0)) is None
    assert cache.get(("s", "act", 1)) is not None  # now the most recently used
    cache.put(("s", "act", 4), block)
    assert cache.get(("s", "act", 2)) is None and cache.get(("s", "act", 1)) is not None
    ChunkCache(0).put(("s", "act", 0), block)  # a zero budget caches nothing


@pytest.mark.parametrize("cache_bytes", [0, 3 * STEP_CHUNK * 4, 32 * 2**20])
def test_cached_step_reads_equal_make_segment(tmp_path: Path, cache_bytes: int) -> None:
    """Several 1024-step chunks (tiny frames keep it fast), read with no, a thrashing and a large cache."""
    url = str(tmp_path / "0.zarr")
    writer = EpisodeStoreWriter.create(url, StoreAttributes("tiny", 0, 0, 0, obs_shape=(1, 2, 2)))
    episodes = []
    for i in range(35):
        rng = np.random.default_rng(i)
        n = int(rng.integers(1, 200))
        end = np.zeros(n, np.uint8)
        end[-1] = 1
        obs = rng.integers(0, 256, (n, 1, 2, 2), dtype=np.uint8)
        rew = rng.normal(size=n).astype(np.float32)
        episodes.append(Episode(obs, rng.integers(0, 17, n), rew, end, np.zeros(n, np.uint8)))
        writer.append(episodes[-1], episode_id=i)
    dataset = ZarrEpisodeDataset([url], step_cache_bytes=cache_bytes)
    assert dataset.num_frames > 3 * STEP_CHUNK
    sampler = SegmentSampler(21, 64, priority_alpha=5.0, can_sample_beyond_end=True, seed=0)
    for _ in range(4):
        ids = sampler.sample(dataset.episode_lengths())
        for got, sid in zip(dataset.load_segments(ids), ids, strict=True):
            want = make_segment(episodes[sid.episode_id], sid)
            for name in ("obs", "act", "rew", "end", "mask_padding"):
                np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    assert dataset.step_cache.nbytes <= cache_bytes
    assert (dataset.step_cache.nbytes > 0) == (cache_bytes > 0)


def test_an_s3_store_recovers_from_an_uncommitted_tail(s3_bucket: str) -> None:
    """A writer that died mid-append on S3 left arrays longer than the index: readers never see
    the tail, reopening cuts it off, appending continues; a missing store is named."""
    url = f"{s3_bucket}/episodes/3.zarr"
    episodes = write_store(url)
    group = zarr.open_group(url, mode="r+")
    committed = sum(LENGTHS)
    for name in ("obs", "act", "rew", "end", "trunc"):
        array = group[name]
        array.resize((committed + 50, *array.shape[1:]))  # type: ignore[union-attr]
        array[committed:] = 1  # type: ignore[index]
    store = EpisodeStore(url)
    assert store.num_frames == committed and len(store.parts) == len(LENGTHS)
    with EpisodeStoreWriter.open(url) as writer:
        assert zarr.open_group(url, mode="r")["obs"].shape[0] == committed  # type: ignore[union-attr]
        extra = make_episode(40, seed=7)
        writer.append(extra, episode_id=len(episodes))
    store = EpisodeStore(url)
    assert_same_episode(store.read_part(len(episodes)), extra)
    assert_same_episode(store.read_part(1), episodes[1])
    with pytest.raises(StoreNotFoundError, match=re.escape(f"{s3_bucket}/episodes/nope.zarr")):
        EpisodeStore(f"{s3_bucket}/episodes/nope.zarr")
