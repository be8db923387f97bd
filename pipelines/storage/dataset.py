"""A dataset: every store of a manifest, read as one :class:`~iris_core.data.structures.EpisodeSource`.

An episode still running when an iteration ends is written as a part of that iteration's store
and continued, under the same ``episode_id``, as the next part in a later store. Here the parts
are laid end to end: the episode's frames are part 0's, then part 1's, and so on. A segment that
crosses a part boundary is read from both stores.

Memory: opening keeps one row of six integers per episode part (and each store's array
metadata); frames are only read for the segments asked for, and decoded chunks of the per-step
arrays are kept in a cache of fixed size, so RAM does not grow with the number of stored frames.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from zarr.core.sync import sync

from iris_core.data.structures import Episode, Segment, SegmentId
from pipelines.storage.episode_store import ChunkCache, EpisodeStore
from pipelines.storage.errors import StoreCorruptedError
from pipelines.storage.manifest import read_manifest
from pipelines.storage.tables import ACHIEVEMENT_PREFIX, empty_table, validate_table

SEGMENT_FIELDS = ("obs", "act", "rew", "end")
_EMPTY = np.zeros(0, np.int64)


class Read(NamedTuple):
    """Steps ``[store_start, store_stop)`` of ``store`` fill positions ``[lo, hi)`` of segment ``segment``."""

    segment: int
    lo: int
    hi: int
    store: EpisodeStore
    store_start: int
    store_stop: int


class ZarrEpisodeDataset:
    """Episodes ``0..num_episodes-1`` spread over the stores ``store_urls`` (in manifest order)."""

    def __init__(
        self, store_urls: Sequence[str], *, name: str | None = None, step_cache_bytes: int = 32 * 2**20
    ) -> None:
        self.name = name or (store_urls[0] if store_urls else "<empty dataset>")
        # Actions, rewards and ends take 7 bytes a step: 32 MB keeps those of ~4.7M steps decoded,
        # so after warm-up a batch decodes only its frames.
        self.step_cache = ChunkCache(step_cache_bytes)
        self.stores = [EpisodeStore(url, self.step_cache) for url in store_urls]
        self._index_parts()

    @classmethod
    def from_manifest(cls, manifest_url: str, **kwargs: int) -> ZarrEpisodeDataset:
        return cls(read_manifest(manifest_url).store_urls(manifest_url), name=str(manifest_url), **kwargs)

    def _index_parts(self) -> None:
        columns = [np.concatenate([s.index[:, j] for s in self.stores] or [_EMPTY])
                   for j in range(5)]  # fmt: skip
        episode_id, part, start, length, finished = columns
        store = np.concatenate(
            [np.full(len(s.index), i, np.int64) for i, s in enumerate(self.stores)] or [_EMPTY]
        )
        order = np.lexsort((part, episode_id))  # by episode, then part
        episode_id, part, start, length, finished, store = (
            a[order].astype(np.int64) for a in (episode_id, part, start, length, finished, store)
        )
        self._check_parts(episode_id, part, store, finished)

        num_episodes = int(episode_id[-1]) + 1 if len(episode_id) else 0
        first = np.searchsorted(episode_id, np.arange(num_episodes + 1))  # (E+1,) CSR pointers
        offset = np.cumsum(length) - length
        self._first_part = first
        self._part_store = store
        self._part_start = start
        self._part_length = length
        self._part_offset = offset - np.repeat(offset[first[:-1]], np.diff(first))  # within the episode
        self._part_row = np.concatenate([np.arange(len(s.index)) for s in self.stores] or [_EMPTY]).astype(
            np.int64
        )[order]
        self._lengths = np.add.reduceat(length, first[:-1]) if num_episodes else np.zeros(0, np.int64)

    def _check_parts(
        self, episode_id: np.ndarray, part: np.ndarray, store: np.ndarray, finished: np.ndarray
    ) -> None:
        def fail(i: int, problem: str) -> None:
            raise StoreCorruptedError(self.stores[int(store[i])].url, f"episode {episode_id[i]}: {problem}")

        if len(episode_id) == 0:
            return
        new_episode = np.concatenate([[True], episode_id[1:] != episode_id[:-1]])
        ids = episode_id[new_episode]
        if ids[0] != 0 or (np.diff(ids) != 1).any():
            missing = sorted(set(range(int(ids[-1]) + 1)) - set(ids.tolist()))[:5]
            raise StoreCorruptedError(self.name, f"episode ids are not contiguous: missing {missing}")
        for i in np.flatnonzero(part != np.where(new_episode, 0, np.concatenate([[0], part[:-1] + 1]))):
            fail(int(i), f"part {part[i]} does not follow the previous part (parts must be 0, 1, 2, ...)")
        continued = ~new_episode
        for i in np.flatnonzero(continued & (store <= np.concatenate([[0], store[:-1]]))):
            fail(int(i), f"part {part[i]} is not in a later store than part {part[i] - 1}")
        for i in np.flatnonzero(continued & (np.concatenate([[0], finished[:-1]]) == 1)):
            fail(int(i), f"part {part[i]} continues an episode that already finished")

    # -- EpisodeSource ----------------------------------------------------------------------------

    @property
    def num_episodes(self) -> int:
        return len(self._lengths)

    @property
    def num_frames(self) -> int:
        return int(self._lengths.sum())

    def episode_lengths(self) -> np.ndarray:
        return self._lengths.copy()

    def plan_reads(self, segment_ids: Sequence[SegmentId]) -> list[Read]:
        """The contiguous store ranges that make up each segment (one per part it overlaps)."""
        reads = []
        for k, sid in enumerate(segment_ids):
            e, start, stop = sid.episode_id, sid.start, sid.stop
            length = int(self._lengths[e])
            assert start < length and stop > 0 and start < stop, (
                f"segment {sid} misses the episode ({length})"
            )
            lo, hi = max(0, start), min(length, stop)
            for p in range(self._first_part[e], self._first_part[e + 1]):
                offset, part_length = int(self._part_offset[p]), int(self._part_length[p])
                a, b = max(lo, offset), min(hi, offset + part_length)
                if a < b:
                    base = int(self._part_start[p]) - offset  # store step of episode step 0
                    store = self.stores[int(self._part_store[p])]
                    reads.append(Read(k, a - start, b - start, store, base + a, base + b))
        return reads

    def load_segments(self, segment_ids: Sequence[SegmentId]) -> list[Segment]:
        """Zero-padded segments. All reads of the batch run concurrently on zarr's event loop,
        each fetching only the chunks its steps fall in."""
        if not segment_ids:
            return []
        L = segment_ids[0].stop - segment_ids[0].start
        assert all(s.stop - s.start == L for s in segment_ids), "segments of one batch must have equal length"
        B = len(segment_ids)
        out: dict[str, np.ndarray] = {
            "obs": np.zeros((B, L, *self.stores[0].attributes.obs_shape), np.uint8),
            "act": np.zeros((B, L), np.int64),
            "rew": np.zeros((B, L), np.float32),
            "end": np.zeros((B, L), np.uint8),
        }
        mask = np.zeros((B, L), bool)
        reads = self.plan_reads(segment_ids)

        by_store: dict[int, list[Read]] = {}
        for r in reads:
            by_store.setdefault(id(r.store), []).append(r)
        groups = [(name, rs) for rs in by_store.values() for name in SEGMENT_FIELDS]

        async def fetch() -> list[list[np.ndarray]]:
            jobs = [
                rs[0].store.read_ranges(name, [(r.store_start, r.store_stop) for r in rs])
                for name, rs in groups
            ]
            return list(await asyncio.gather(*jobs))

        for (name, rs), arrays in zip(groups, sync(fetch()), strict=True):
            for r, values in zip(rs, arrays, strict=True):
                out[name][r.segment, r.lo : r.hi] = values
        for r in reads:
            mask[r.segment, r.lo : r.hi] = True
        return [
            Segment(out["obs"][k], out["act"][k], out["rew"][k], out["end"][k], mask[k], sid)
            for k, sid in enumerate(segment_ids)
        ]

    # -- whole episodes and tables ----------------------------------------------------------------

    def load_episode(self, episode_id: int) -> Episode:
        """All parts of one episode, concatenated."""
        parts = [
            self.stores[int(self._part_store[p])].read_part(int(self._part_row[p]))
            for p in range(self._first_part[episode_id], self._first_part[episode_id + 1])
        ]
        obs, act, rew, end, trunc = (
            np.concatenate([getattr(x, f) for x in parts]) for f in ("obs", "act", "rew", "end", "trunc")
        )
        return Episode(obs, act, rew, end, trunc)

    def episode_table(self) -> pd.DataFrame:
        """One validated row per episode: parts merged (lengths and returns summed; counters,
        ``finished``, iteration and policy version of the last part)."""
        if not self.num_episodes:
            return empty_table(any(s.attributes.with_achievements for s in self.stores))
        parts = pd.concat([s.table() for s in self.stores], ignore_index=True)
        parts = parts.sort_values(["episode_id", "part"], kind="stable")
        grouped = parts.groupby("episode_id", sort=True)
        last = grouped.last()
        merged = last.assign(length=grouped["length"].sum(), **{"return": grouped["return"].sum()})
        columns = ["part", "length", "return", "finished", "iteration", "policy_version"]
        columns += [c for c in parts.columns if c.startswith(ACHIEVEMENT_PREFIX)]
        return validate_table(merged[columns].reset_index(), self.name)
