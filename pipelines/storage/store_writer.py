"""Appending episode parts to a store, and recovering a store after a killed writer.

See :mod:`pipelines.storage.episode_store` for the layout and the commit protocol.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from iris_core.data.structures import Episode
from pipelines.storage import locations, writer_lock
from pipelines.storage.episode_store import (
    FIELDS,
    FRAME_CHUNK,
    INDEX_CHUNK,
    INDEX_COLUMNS,
    STEP_CHUNK,
    STEP_DTYPES,
    STEP_FIELDS,
    EpisodeStore,
    StoreAttributes,
    StoredPart,
    array_of,
    compressors,
    open_group,
    table_frame,
    to_stored_frames,
)
from pipelines.storage.errors import StoreError, TableValidationError
from pipelines.storage.tables import CRAFTER_ACHIEVEMENTS, validate_table
from pipelines.storage.writer_lock import WriterLock


class EpisodeStoreWriter:
    """Appends episode parts to one store. One writer per store at a time: creating or opening a
    writer takes the store's lock (:mod:`~pipelines.storage.writer_lock`), released by
    :meth:`close` (or ``with``, or when the writer is garbage-collected or its process dies)."""

    def __init__(
        self, url: str, group: zarr.Group, attributes: StoreAttributes, index: np.ndarray, lock: WriterLock
    ) -> None:
        self.url = url
        self._lock = lock
        self._closed = False
        self.attributes = attributes
        self._group = group
        # Every chunk is written, even one that holds only zeros (Zarr would skip it): readers
        # then know that a missing chunk file is damage, not zeros (schema version 2).
        self._arrays = {
            name: array_of(group, name).with_config({"write_empty_chunks": True}).async_array
            for name in group.array_keys()
        }
        self._num_parts = len(index)
        self._num_frames = int(index[:, 3].sum())

    @classmethod
    def create(cls, url: str, attributes: StoreAttributes) -> EpisodeStoreWriter:
        url = str(url)
        fs, path = locations.filesystem(url)
        lock = writer_lock.acquire(url)
        try:
            if fs.exists(path):
                raise StoreError(url, "already exists (stores are immutable: open it to continue writing)")
            return cls._create(url, attributes, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _create(cls, url: str, attributes: StoreAttributes, lock: WriterLock) -> EpisodeStoreWriter:
        group = zarr.open_group(
            store=locations.zarr_store(url, read_only=False), mode="w-", attributes=attributes.to_json()
        )
        common: dict[str, Any] = {"compressors": compressors(), "fill_value": 0}
        c, h, w = attributes.obs_shape
        group.create_array("obs", shape=(0, h, w, c), dtype=np.uint8, chunks=(FRAME_CHUNK, h, w, c), **common)
        for name in STEP_FIELDS:
            group.create_array(name, shape=(0,), dtype=STEP_DTYPES[name], chunks=(STEP_CHUNK,), **common)
        group.create_array("return", shape=(0,), dtype=np.float64, chunks=(INDEX_CHUNK,), **common)
        if attributes.with_achievements:
            group.create_array("achievements", shape=(0, len(CRAFTER_ACHIEVEMENTS)), dtype=np.int64,
                               chunks=(INDEX_CHUNK, len(CRAFTER_ACHIEVEMENTS)), **common)  # fmt: skip
        # Created last: a store without its index cannot be opened, so a half-created store is
        # never mistaken for an empty one.
        group.create_array("index", shape=(0, len(INDEX_COLUMNS)), dtype=np.int64,
                           chunks=(INDEX_CHUNK, len(INDEX_COLUMNS)), **common)  # fmt: skip
        return cls(url, group, attributes, np.zeros((0, len(INDEX_COLUMNS)), np.int64), lock)

    @classmethod
    def open(cls, url: str) -> EpisodeStoreWriter:
        """Reopen a store to append to it, dropping whatever a killed writer left uncommitted.

        First every chunk under the committed tail is decoded, which checks its checksum: a
        damaged one raises :class:`~pipelines.storage.errors.StoreCorruptedError` naming the store,
        the chunk and "corrupt", and nothing is written or removed."""
        url = str(url)
        # First the lock: recovering a store that a live writer is writing would truncate its
        # current episode.
        lock = writer_lock.acquire(url)
        try:
            return cls._recover(url, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _recover(cls, url: str, lock: WriterLock) -> EpisodeStoreWriter:
        committed = EpisodeStore(url)  # raises, and deletes nothing, if the store is unusable
        # Every committed chunk must decode with its zstd checksum before anything is appended:
        # a new part written after a damaged one would hide the damage in a store that looks whole.
        committed.verify_chunks()
        fs, path = locations.filesystem(url)
        for stray in fs.find(path):
            if stray.endswith(".partial"):
                fs.rm(stray)
        group = open_group(url, read_only=False)
        n, m = committed.num_frames, len(committed.index)
        sizes = {name: n for name in FIELDS} | {name: m for name in ("return", "achievements", "index")}
        for name, size in sizes.items():
            if name in group and (array := array_of(group, name)).shape[0] != size:
                array.resize((size, *array.shape[1:]))
        return cls(url, group, committed.attributes, committed.index, lock)

    def close(self) -> None:
        """Release the store's writer lock; the writer appends no more (idempotent)."""
        self._closed = True
        self._lock.release()

    def __enter__(self) -> EpisodeStoreWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def num_frames(self) -> int:
        """Committed steps: where the next part starts."""
        return self._num_frames

    @property
    def num_parts(self) -> int:
        """Committed index rows."""
        return self._num_parts

    def append(self, episode: Episode, *, episode_id: int, part: int = 0) -> StoredPart:
        """Commit ``episode`` as part ``part`` of episode ``episode_id``.

        An unfinished episode is written as a part and continued (same ``episode_id``,
        ``part + 1``, only the new steps) in the next iteration's store.
        """
        if self._closed:
            raise StoreError(self.url, "this writer was closed (open the store again to append)")
        if self._lock.inherited or self._lock.owner_pid != os.getpid():  # also stores without a lock
            raise StoreError(
                self.url,
                f"this writer belongs to process {self._lock.owner_pid} and was copied into this one "
                "by fork; one writer per store (open the store here once that writer is closed)",
            )
        self._check_episode(episode)
        length = len(episode)
        stored = StoredPart(episode_id, part, self._num_frames, length, episode.is_finished)
        row = np.array([[episode_id, part, stored.start, length, int(stored.finished)]], dtype=np.int64)
        ret = np.array([episode.episode_return], dtype=np.float64)
        achievements = self._achievements(episode) if self.attributes.with_achievements else None
        validate_table(table_frame(row, ret, achievements, self.attributes), self.url)

        arrays = self._arrays
        data = {
            "obs": to_stored_frames(episode.obs),
            **{name: getattr(episode, name).astype(STEP_DTYPES[name]) for name in STEP_FIELDS},
        }

        async def commit() -> None:
            await asyncio.gather(*(arrays[name].append(values) for name, values in data.items()))
            table = [arrays["return"].append(ret)]
            if achievements is not None:
                table.append(arrays["achievements"].append(achievements))
            await asyncio.gather(*table)
            await arrays["index"].append(row)  # the commit

        sync(commit())
        self._num_parts += 1
        self._num_frames += length
        return stored

    def _check_episode(self, episode: Episode) -> None:
        problems = []
        if len(episode) == 0:
            problems.append("is empty")
        if episode.obs.shape[1:] != self.attributes.obs_shape:
            problems.append(
                f"has frames of shape {episode.obs.shape[1:]}, the store {self.attributes.obs_shape}"
            )
        if len(episode) and episode.end[:-1].any():
            problems.append("has an end before its last step")
        if (episode.trunc.astype(bool) & ~episode.end.astype(bool)).any():
            problems.append("has a truncation without an end")
        info = np.iinfo(np.int16)
        if len(episode) and (episode.act.min() < info.min or episode.act.max() > info.max):
            problems.append("has actions outside int16")
        if problems:
            raise StoreError(self.url, "episode " + ", ".join(problems))

    def _achievements(self, episode: Episode) -> np.ndarray:
        counters = episode.info.get("achievements")
        if not isinstance(counters, Mapping) or set(counters) != set(CRAFTER_ACHIEVEMENTS):
            raise TableValidationError(
                self.url,
                "episode.info['achievements'] must map each of the 22 Crafter achievements to a count",
            )
        return np.array([[int(counters[name]) for name in CRAFTER_ACHIEVEMENTS]], dtype=np.int64)
