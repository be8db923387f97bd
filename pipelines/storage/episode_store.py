"""One immutable Zarr store of the episodes collected in one iteration.

Layout of ``<iteration>.zarr`` (a Zarr v3 group)::

    zarr.json       group attributes: schema_version, env_id, seed, iteration, policy_version,
                    obs_shape, with_achievements
    obs             (N, H, W, C) uint8, chunks of 32 frames, zstd (read back as (N, C, H, W))
    act             (N,) int16      ┐
    rew             (N,) float32    │ chunks of 1024 steps, zstd
    end             (N,) uint8      │
    trunc           (N,) uint8      ┘
    return          (M,) float64    per-part table columns that are not in the index
    achievements    (M, 22) int64   (Crafter only)
    index           (M, 5) int64    rows (episode_id, part, start, length, finished): the commit record

Frames of all episode parts are concatenated along time in the flat arrays; index row ``i``
says that ``obs[start:start + length]`` is part ``part`` of episode ``episode_id``.

Commit protocol (``store_writer.EpisodeStoreWriter.append``): the frames, then the table values,
then the index row, each write awaited before the next starts. Zarr writes a chunk atomically
but grows an array's shape before writing its chunks, so a killed writer leaves longer arrays
whose tails read as zeros. A committed index row always has ``length >= 1``, so an index row
that reads as zeros was never committed. Readers trust exactly the index rows before the first
zero row, and the frames those rows cover. Every chunk is written, even an all-zero one (schema
version 2), so a chunk file missing under committed steps is reported as damage on open.
Reopening for writing first decodes every committed chunk (each chunk's zstd frame carries a
checksum of its content: this is the store's checksum record) and refuses a store with a damaged
one; then it truncates every array to that committed size and removes the ``*.partial``
temporaries of interrupted chunk writes.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import zarr
import zarr.codecs
from zarr.core.sync import sync

from iris_core.data.structures import Episode
from pipelines.storage import locations
from pipelines.storage.errors import (
    SchemaVersionError,
    StoreCorruptedError,
    StoreNotFoundError,
)
from pipelines.storage.tables import CRAFTER_ACHIEVEMENTS, achievement_column, validate_table

SCHEMA_VERSION = 2
FRAME_CHUNK = 32  # frames per obs chunk: a 21-frame segment touches one or two chunks
STEP_CHUNK = 1024  # steps per chunk of the small per-step arrays
INDEX_CHUNK = 1024
INDEX_COLUMNS = ("episode_id", "part", "start", "length", "finished")
STEP_FIELDS = ("act", "rew", "end", "trunc")
STEP_DTYPES = {"act": np.int16, "rew": np.float32, "end": np.uint8, "trunc": np.uint8}
FIELDS = ("obs", *STEP_FIELDS)


def compressors() -> tuple[zarr.codecs.ZstdCodec]:
    # Level 9: on Crafter frames ~10% smaller than the default level 3 and no slower to decode;
    # encoding costs ~4 ms per 32-frame chunk, far below the cost of stepping the game.
    # The zstd frame checksum turns a flipped byte in a chunk into a read error, not silent garbage.
    return (zarr.codecs.ZstdCodec(level=9, checksum=True),)


def to_stored_frames(obs: np.ndarray) -> np.ndarray:
    """(T, C, H, W) -> (T, H, W, C). Pixels with their three channels side by side compress ~15%
    better than channel planes (Crafter), and the transpose back costs little next to decoding."""
    return np.ascontiguousarray(obs.transpose(0, 2, 3, 1))


def from_stored_frames(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, C) -> (T, C, H, W), as a view."""
    return frames.transpose(0, 3, 1, 2)


@dataclass(frozen=True)
class StoreAttributes:
    """Facts about a whole collection, kept in the group attributes."""

    env_id: str
    seed: int
    iteration: int
    policy_version: int
    obs_shape: tuple[int, int, int] = (3, 64, 64)
    with_achievements: bool = False  # Crafter: the table carries the 22 achievement counters
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "env_id": self.env_id,
            "seed": self.seed,
            "iteration": self.iteration,
            "policy_version": self.policy_version,
            "obs_shape": list(self.obs_shape),
            "with_achievements": self.with_achievements,
        }

    @classmethod
    def from_json(cls, attrs: Mapping[str, Any], store: str) -> StoreAttributes:
        version = attrs.get("schema_version")
        if not isinstance(version, int):
            raise StoreCorruptedError(store, "not an episode store (no integer 'schema_version' attribute)")
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                store, f"written with schema version {version}; this code reads versions <= {SCHEMA_VERSION}"
            )
        try:
            c, h, w = (int(x) for x in attrs["obs_shape"])
            return cls(
                env_id=str(attrs["env_id"]),
                seed=int(attrs["seed"]),
                iteration=int(attrs["iteration"]),
                policy_version=int(attrs["policy_version"]),
                obs_shape=(c, h, w),
                with_achievements=bool(attrs["with_achievements"]),
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise StoreCorruptedError(store, f"bad group attributes: {error!r}") from None


@dataclass(frozen=True)
class StoredPart:
    """One committed index row."""

    episode_id: int
    part: int
    start: int
    length: int
    finished: bool


def open_group(url: str, *, read_only: bool) -> zarr.Group:
    fs, path = locations.filesystem(url)
    if not fs.exists(path.rstrip("/") + "/zarr.json"):
        raise StoreNotFoundError(url, "no episode store here (missing zarr.json)")
    try:
        return zarr.open_group(
            store=locations.zarr_store(url, read_only=read_only), mode="r" if read_only else "r+"
        )
    except Exception as error:
        raise StoreCorruptedError(url, f"cannot open the Zarr group: {error!r}") from None


def array_of(group: zarr.Group, name: str) -> zarr.Array[Any]:
    node = group[name]
    assert isinstance(node, zarr.Array), f"{name} is not an array"
    return node


def _committed_index(index: np.ndarray, store: str) -> np.ndarray:
    """The committed prefix of the index, checked for consistency."""
    uncommitted = np.flatnonzero(index[:, 3] == 0)
    num_committed = int(uncommitted[0]) if len(uncommitted) else len(index)
    if (index[num_committed:] != 0).any():
        raise StoreCorruptedError(store, f"index row {num_committed} is empty but later rows are not")
    rows = index[:num_committed]
    expected_starts = np.concatenate([[0], np.cumsum(rows[:, 3])[:-1]]) if len(rows) else rows[:, 2]
    if (
        (rows[:, 2] != expected_starts).any()
        or (rows[:, :2] < 0).any()
        or not np.isin(rows[:, 4], (0, 1)).all()
    ):
        raise StoreCorruptedError(store, "index rows are inconsistent (starts, ids or finished flags)")
    return rows


class ChunkCache:
    """Decoded chunks of the small per-step arrays, bounded in bytes, least recently used evicted.

    Committed steps never change, so cached chunks stay valid. One cache serves all stores of a
    dataset: its size, not the dataset's, bounds the memory it takes.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._chunks: OrderedDict[tuple[str, str, int], np.ndarray] = OrderedDict()

    def get(self, key: tuple[str, str, int]) -> np.ndarray | None:
        chunk = self._chunks.get(key)
        if chunk is not None:
            self._chunks.move_to_end(key)
        return chunk

    def put(self, key: tuple[str, str, int], chunk: np.ndarray) -> None:
        if chunk.nbytes > self.max_bytes or key in self._chunks:
            return
        self._chunks[key] = chunk
        self.nbytes += chunk.nbytes
        while self.nbytes > self.max_bytes:
            _, evicted = self._chunks.popitem(last=False)
            self.nbytes -= evicted.nbytes


class EpisodeStore:
    """Read-only view of the committed episodes of one store.

    Opening reads the attributes and the index (a few bytes per episode); frames are read on demand.
    """

    def __init__(self, url: str, cache: ChunkCache | None = None) -> None:
        self.url = str(url)
        self.cache = cache if cache is not None else ChunkCache(0)
        self._group = open_group(self.url, read_only=True)
        self.attributes = StoreAttributes.from_json(self._group.attrs.asdict(), self.url)
        try:
            arrays = {name: array_of(self._group, name) for name in (*FIELDS, "return", "index")}
            if self.attributes.with_achievements:
                arrays["achievements"] = array_of(self._group, "achievements")
            raw_index = np.asarray(arrays["index"][:], dtype=np.int64)
        except KeyError as error:
            raise StoreCorruptedError(
                self.url, f"missing array {error} (was its creation interrupted? then re-create it)"
            ) from None
        except Exception as error:
            raise StoreCorruptedError(self.url, f"cannot read the index: {error!r}") from None
        self.index = _committed_index(raw_index, self.url)
        self.num_frames = int(self.index[:, 3].sum())
        self._arrays = {name: a.async_array for name, a in arrays.items()}
        self._check_shapes()
        if self.attributes.schema_version >= 2:  # version 1 skipped chunks that held only zeros
            self._check_chunks()

    def _check_shapes(self) -> None:
        shapes = {name: a.shape for name, a in self._arrays.items()}
        c, h, w = self.attributes.obs_shape
        if shapes["obs"][1:] != (h, w, c):
            raise StoreCorruptedError(
                self.url, f"obs holds frames of shape {shapes['obs'][1:]}, not {(h, w, c)}"
            )
        for name in FIELDS:
            if shapes[name][0] < self.num_frames:
                raise StoreCorruptedError(
                    self.url, f"'{name}' holds {shapes[name][0]} steps, the index commits {self.num_frames}"
                )
        for name in ("return", "achievements"):
            if name in shapes and shapes[name][0] < len(self.index):
                raise StoreCorruptedError(
                    self.url, f"'{name}' holds {shapes[name][0]} rows, the index commits {len(self.index)}"
                )

    def _check_chunks(self) -> None:
        """Every chunk holding committed steps exists.

        Zarr reads a missing chunk as its fill value, so a deleted chunk file would silently read
        back as zeros; one listing per array (a few hundred keys per store) rules that out.
        """
        committed = {name: n for name, n in self.committed_lengths().items() if name != "index"}

        async def missing_chunks(name: str, length: int) -> list[str]:
            array = self._arrays[name]
            step = array.chunks[0]
            expected = {
                f"{array.store_path.path}/{array.metadata.encode_chunk_key((i, *(0,) * (array.ndim - 1)))}"
                for i in range(-(-length // step))
            }
            present = {key async for key in array.store_path.store.list_prefix(f"{array.store_path.path}/")}
            return sorted(expected - present)

        async def gather() -> list[list[str]]:
            return list(await asyncio.gather(*(missing_chunks(n, k) for n, k in committed.items())))

        try:
            missing = [key for keys in sync(gather()) for key in keys]
        except Exception as error:
            raise StoreCorruptedError(self.url, f"cannot list the chunks: {error!r}") from None
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise StoreCorruptedError(self.url, f"chunks holding committed steps are missing: {shown}")

    def committed_lengths(self) -> dict[str, int]:
        """Committed length (first axis) of every array of the store."""
        lengths = {name: self.num_frames for name in FIELDS}
        for name in ("return", "achievements", "index"):
            if name in self._arrays:
                lengths[name] = len(self.index)
        return lengths

    def verify_chunks(self, concurrency: int = 16) -> None:
        """Decode every chunk holding committed data, so that zstd checks each chunk's checksum.

        Raises :class:`StoreCorruptedError` naming the first damaged chunk (by its key in the
        store) and the word "corrupt". Costs one decode of the whole store: a writer does this
        before it appends (see ``EpisodeStoreWriter.open``); readers rely on the checksum of each
        chunk they read.
        """
        limit = asyncio.Semaphore(concurrency)

        async def check(name: str, i: int, length: int) -> str | None:
            array = self._arrays[name]
            step = array.chunks[0]
            async with limit:
                try:
                    await array.getitem(slice(i * step, min((i + 1) * step, length)))
                except Exception as error:
                    key = array.metadata.encode_chunk_key((i, *(0,) * (array.ndim - 1)))
                    return f"{array.store_path.path}/{key}: {type(error).__name__}: {error}"
            return None

        async def gather() -> list[str | None]:
            jobs = [
                check(name, i, length)
                for name, length in self.committed_lengths().items()
                for i in range(-(-length // self._arrays[name].chunks[0]))
            ]
            return list(await asyncio.gather(*jobs))

        damaged = [problem for problem in sync(gather()) if problem is not None]
        if damaged:
            chunk, _, detail = damaged[0].partition(": ")
            more = f" ({len(damaged) - 1} more damaged chunks)" if len(damaged) > 1 else ""
            raise StoreCorruptedError(
                self.url,
                f"chunk {chunk} is corrupt (its checksum or encoding does not verify: "
                f"{detail.splitlines()[0] if detail else 'no detail'}){more}; "
                "not appending to a damaged store",
            )

    @property
    def parts(self) -> list[StoredPart]:
        return [StoredPart(int(e), int(p), int(s), int(n), bool(f)) for e, p, s, n, f in self.index]

    async def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Steps ``[start, stop)`` of array ``name`` (only the chunks they cover are fetched).
        Frames come back as a (T, C, H, W) view."""
        assert 0 <= start <= stop <= self.num_frames, (name, start, stop, self.num_frames)
        try:
            data = await self._arrays[name].getitem(slice(start, stop))
        except Exception as error:
            raise StoreCorruptedError(self.url, f"cannot read '{name}'[{start}:{stop}]: {error!r}") from None
        return from_stored_frames(np.asarray(data)) if name == "obs" else np.asarray(data)

    async def read_ranges(self, name: str, ranges: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Several ``[start, stop)`` ranges of array ``name``.

        Frames are read range by range: a 6-frame read decodes one 32-frame chunk and copies only
        its 6 frames. The small per-step arrays are fetched once per chunk for all ranges instead:
        the segments of a batch share few 1024-step chunks, and each chunk read costs far more in
        overhead than its bytes.
        """
        if name == "obs":
            return list(await asyncio.gather(*(self.read(name, a, b) for a, b in ranges)))
        C = STEP_CHUNK
        needed = sorted({c for a, b in ranges for c in range(a // C, (b - 1) // C + 1)})
        by_chunk = {c: block for c in needed if (block := self.cache.get((self.url, name, c))) is not None}
        missing = [c for c in needed if c not in by_chunk]
        blocks = await asyncio.gather(
            *(self.read(name, c * C, min((c + 1) * C, self.num_frames)) for c in missing)
        )
        for c, block in zip(missing, blocks, strict=True):
            by_chunk[c] = block
            if len(block) == C:  # a store's last, partial chunk may still grow: never cached
                self.cache.put((self.url, name, c), block)
        out = []
        for a, b in ranges:
            pieces = [by_chunk[c][max(a, c * C) - c * C : min(b, (c + 1) * C) - c * C]
                      for c in range(a // C, (b - 1) // C + 1)]  # fmt: skip
            out.append(pieces[0] if len(pieces) == 1 else np.concatenate(pieces))
        return out

    def read_part(self, row: int) -> Episode:
        """Index row ``row`` as an :class:`Episode` (mainly for tests and inspection)."""
        _, _, start, length, _ = (int(x) for x in self.index[row])

        async def gather() -> list[np.ndarray]:
            return list(await asyncio.gather(*(self.read(n, start, start + length) for n in FIELDS)))

        obs, act, rew, end, trunc = sync(gather())
        return Episode(obs=np.ascontiguousarray(obs), act=act.astype(np.int64), rew=rew, end=end, trunc=trunc)

    def table(self) -> pd.DataFrame:
        """The per-part table (validated): one row per committed index row."""
        m = len(self.index)
        try:
            returns = np.asarray(array_of(self._group, "return")[:m], dtype=np.float64)
            achievements = (
                np.asarray(array_of(self._group, "achievements")[:m], dtype=np.int64)
                if self.attributes.with_achievements
                else None
            )
        except Exception as error:
            raise StoreCorruptedError(self.url, f"cannot read the episode table: {error!r}") from None
        return validate_table(table_frame(self.index, returns, achievements, self.attributes), self.url)


def table_frame(
    index: np.ndarray, returns: np.ndarray, achievements: np.ndarray | None, attributes: StoreAttributes
) -> pd.DataFrame:
    m = len(index)
    columns: dict[str, Any] = {
        "episode_id": index[:, 0].astype(np.int64),
        "part": index[:, 1].astype(np.int64),
        "length": index[:, 3].astype(np.int64),
        "return": returns.astype(np.float64),
        "finished": index[:, 4].astype(bool),
        "iteration": np.full(m, attributes.iteration, dtype=np.int64),
        "policy_version": np.full(m, attributes.policy_version, dtype=np.int64),
    }
    if achievements is not None:
        for j, name in enumerate(CRAFTER_ACHIEVEMENTS):
            columns[achievement_column(name)] = achievements[:, j].astype(np.int64)
    return pd.DataFrame(columns)
