"""The data structures shared by collection, storage, sampling and training (docs/method.md §2).

An observation ``obs[t]`` is stored with the action ``act[t]`` taken in it, the reward ``rew[t]``
received after that action and ``end[t]`` (1 when the episode ended after that action, by death,
game over or time limit). ``trunc[t]`` is 1 where that end was a time limit (kept for analysis;
the agent treats it as a termination, docs/method.md §1). The observation after the final step is
never stored.

Frames are uint8 ``(C, H, W)`` everywhere outside the networks; models divide by 255 themselves,
so batches travel to the accelerator as bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch


@dataclass
class Episode:
    obs: np.ndarray  # (T, C, H, W) uint8
    act: np.ndarray  # (T,) int64
    rew: np.ndarray  # (T,) float32
    end: np.ndarray  # (T,) uint8, at most one 1, only at the last step
    trunc: np.ndarray  # (T,) uint8, 1 only where end is 1 and the cause was a time limit
    # Per-episode facts that are not per step (e.g. Crafter achievement counters).
    info: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        length = len(self.obs)
        assert self.obs.ndim == 4 and self.obs.dtype == np.uint8, (self.obs.shape, self.obs.dtype)
        for name in ("act", "rew", "end", "trunc"):
            value = getattr(self, name)
            assert value.shape == (length,), f"{name}: expected ({length},), got {value.shape}"

    def __len__(self) -> int:
        return len(self.obs)

    @property
    def is_finished(self) -> bool:
        return bool(len(self) > 0 and self.end[-1])

    @property
    def episode_return(self) -> float:
        return float(self.rew.sum(dtype=np.float64))


@dataclass(frozen=True)
class SegmentId:
    """Frames ``[start, stop)`` of an episode; may reach outside ``[0, len)`` (zero padding)."""

    episode_id: int
    start: int
    stop: int


@dataclass
class Segment:
    obs: np.ndarray  # (L, C, H, W) uint8
    act: np.ndarray  # (L,) int64
    rew: np.ndarray  # (L,) float32
    end: np.ndarray  # (L,) uint8
    mask_padding: np.ndarray  # (L,) bool, True on real frames
    id: SegmentId


def make_segment(episode: Episode, segment_id: SegmentId) -> Segment:
    """Cut ``[start, stop)`` out of an episode, padding with zeros outside it (docs/method.md §2)."""
    length = len(episode)
    start, stop = segment_id.start, segment_id.stop
    assert start < length and stop > 0 and start < stop, f"segment {segment_id} misses the episode ({length})"
    pad_left, pad_right = max(0, -start), max(0, stop - length)
    lo, hi = max(0, start), min(length, stop)

    def cut(array: np.ndarray) -> np.ndarray:
        if pad_left == 0 and pad_right == 0:
            return array[lo:hi]
        widths = [(pad_left, pad_right)] + [(0, 0)] * (array.ndim - 1)
        return np.pad(array[lo:hi], widths)

    mask = np.zeros(stop - start, dtype=bool)
    mask[pad_left : pad_left + hi - lo] = True
    return Segment(cut(episode.obs), cut(episode.act), cut(episode.rew), cut(episode.end), mask, segment_id)


@dataclass
class Batch:
    obs: torch.Tensor  # (B, L, C, H, W) uint8
    act: torch.Tensor  # (B, L) int64
    rew: torch.Tensor  # (B, L) float32
    end: torch.Tensor  # (B, L) int64
    mask_padding: torch.Tensor  # (B, L) bool
    segment_ids: list[SegmentId]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.obs.to(device, non_blocking=non_blocking),
            self.act.to(device, non_blocking=non_blocking),
            self.rew.to(device, non_blocking=non_blocking),
            self.end.to(device, non_blocking=non_blocking),
            self.mask_padding.to(device, non_blocking=non_blocking),
            self.segment_ids,
        )

    def pin_memory(self) -> Batch:
        return Batch(
            self.obs.pin_memory(),
            self.act.pin_memory(),
            self.rew.pin_memory(),
            self.end.pin_memory(),
            self.mask_padding.pin_memory(),
            self.segment_ids,
        )

    def obs_float(self) -> torch.Tensor:
        """Frames in [0, 1] (the reference's collate divides by 255)."""
        return self.obs.float().div_(255)


def collate(segments: Sequence[Segment]) -> Batch:
    """Stack segments of equal length into a batch."""
    return Batch(
        obs=torch.from_numpy(np.stack([s.obs for s in segments])),
        act=torch.from_numpy(np.stack([s.act for s in segments]).astype(np.int64)),
        rew=torch.from_numpy(np.stack([s.rew for s in segments]).astype(np.float32)),
        end=torch.from_numpy(np.stack([s.end for s in segments]).astype(np.int64)),
        mask_padding=torch.from_numpy(np.stack([s.mask_padding for s in segments])),
        segment_ids=[s.id for s in segments],
    )


class EpisodeSource(Protocol):
    """What training needs from episode storage (in memory, or a Zarr dataset in ``pipelines``)."""

    @property
    def num_episodes(self) -> int: ...

    def episode_lengths(self) -> np.ndarray:
        """``(num_episodes,)`` int64 lengths, indexed by episode id ``0..num_episodes-1``."""
        ...

    def load_segments(self, segment_ids: Sequence[SegmentId]) -> list[Segment]:
        """The segments, zero-padded outside their episodes (reads only what they cover)."""
        ...
