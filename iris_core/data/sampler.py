"""Segment sampling with per-episode priorities, and the evaluation traversal (docs/method.md §3).

Glossary: an *episode* is addressed by its id ``0..num_episodes-1``; a *segment* is a window
``[start, stop)`` of ``sequence_length`` frames of one episode, zero-padded where it reaches outside
the episode; ``count_e`` is how many segments of episode ``e`` this component has been trained on.

Sampling one segment (reference ``BatchSampler.sample``):

1. an episode ``e`` with probability ``p_e ∝ (1 + count_e) ** -alpha`` (with replacement);
2. a timestep ``t`` uniform in ``0..len_e-1``;
3. the window around ``t``, by one of two rules:

   - ``can_sample_beyond_end=True`` (tokenizer, world model): ``start = t - U{0..L-1}``,
     ``stop = start + L``; ``t`` lands at a uniform position in the window, padding on either side;
   - ``can_sample_beyond_end=False`` (actor-critic): ``stop = min(len_e, t + 1 + U{0..L-1})``,
     ``start = stop - L``; the window always ends on a real frame, padding only on the left.

Each component owns one :class:`SegmentSampler`, hence its own counts. Counts stay frozen during
paper epoch 1 (``update_counts=False``) and are incremented for every sampled segment afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iris_core.config import ComponentTrainingConfig
from iris_core.data.structures import (
    Batch,
    Episode,
    EpisodeSource,
    Segment,
    SegmentId,
    collate,
    make_segment,
)


@dataclass(eq=False)  # holds arrays and a generator: compare state_dicts instead
class SegmentSampler:
    """Draws batches of :class:`SegmentId` for one component.

    The number of episodes may grow between calls (collection appends episodes): ``sample`` takes
    the current lengths, and episodes it has not seen before start with count 0.
    """

    sequence_length: int
    batch_num_samples: int
    priority_alpha: float
    can_sample_beyond_end: bool
    seed: int = 0
    # False during paper epoch 1 (docs/method.md §3). When True, ``sample`` counts the segments it
    # returns, so the next batch already sees them (the reference's loader lags by its prefetch depth).
    update_counts: bool = False
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        assert self.sequence_length >= 1, self.sequence_length
        assert self.batch_num_samples >= 1, self.batch_num_samples
        assert self.priority_alpha >= 0, self.priority_alpha
        self.counts = np.asarray(self.counts, dtype=np.int64).copy()
        self.rng = np.random.default_rng(self.seed)

    @classmethod
    def from_config(
        cls, config: ComponentTrainingConfig, *, can_sample_beyond_end: bool, seed: int
    ) -> SegmentSampler:
        assert config.sequence_length is not None, "sequence_length must be derived first"
        return cls(
            sequence_length=config.sequence_length,
            batch_num_samples=config.batch_num_samples,
            priority_alpha=config.priority_alpha,
            can_sample_beyond_end=can_sample_beyond_end,
            seed=seed,
        )

    # -- priorities -------------------------------------------------------------------------------

    def _grow(self, num_episodes: int) -> None:
        assert num_episodes >= len(self.counts), (
            f"the dataset shrank from {len(self.counts)} to {num_episodes} episodes"
        )
        if num_episodes > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(num_episodes - len(self.counts), np.int64)])

    def probabilities(self, num_episodes: int) -> np.ndarray:
        """``(num_episodes,)`` float64: ``p_e ∝ (1 + count_e) ** -alpha``."""
        self._grow(num_episodes)
        p: np.ndarray = (1.0 + self.counts) ** -self.priority_alpha
        normalised: np.ndarray = p / p.sum()
        return normalised

    # -- sampling ---------------------------------------------------------------------------------

    def sample(self, episode_lengths: np.ndarray) -> list[SegmentId]:
        """One batch of ``batch_num_samples`` segment ids over episodes of the given lengths."""
        lengths = np.asarray(episode_lengths, dtype=np.int64)
        assert lengths.ndim == 1 and len(lengths) > 0, "no episodes to sample from"
        assert (lengths > 0).all(), "episodes must hold at least one frame"
        L, B = self.sequence_length, self.batch_num_samples

        episode_ids = self.rng.choice(len(lengths), size=B, replace=True, p=self.probabilities(len(lengths)))
        lens = lengths[episode_ids]
        timesteps = self.rng.integers(0, lens)
        offsets = self.rng.integers(0, L, size=B)
        if self.can_sample_beyond_end:
            starts = timesteps - offsets
            stops = starts + L
        else:
            stops = np.minimum(lens, timesteps + 1 + offsets)
            starts = stops - L

        if self.update_counts:
            np.add.at(self.counts, episode_ids, 1)
        return [SegmentId(int(e), int(a), int(b)) for e, a, b in zip(episode_ids, starts, stops, strict=True)]

    # -- checkpoints ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Counts and generator state: a resumed run draws the same batches as an uninterrupted one."""
        return {"counts": self.counts.copy(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = np.asarray(state["counts"], dtype=np.int64).copy()
        self.rng.bit_generator.state = state["rng"]


def load_batch(source: EpisodeSource, segment_ids: Sequence[SegmentId]) -> Batch:
    """Read the segments from ``source`` and stack them."""
    return collate(source.load_segments(segment_ids))


# ---------------------------------------------------------------------------------------------
# Evaluation traversal (reference DatasetTraverser)
# ---------------------------------------------------------------------------------------------


def traversal_segment_ids(episode_lengths: np.ndarray, sequence_length: int) -> list[SegmentId]:
    """Every episode cut into consecutive chunks of ``sequence_length`` frames; a final chunk with
    fewer than 2 real frames is dropped (it holds no transition)."""
    ids = []
    for episode_id, length in enumerate(np.asarray(episode_lengths, dtype=np.int64).tolist()):
        for start in range(0, length, sequence_length):
            if length - start >= 2:
                ids.append(SegmentId(episode_id, start, start + sequence_length))
    return ids


def traverse(source: EpisodeSource, sequence_length: int, batch_num_samples: int) -> Iterator[Batch]:
    """Batches of ``batch_num_samples`` chunks (the last one may be smaller) covering the dataset."""
    ids = traversal_segment_ids(source.episode_lengths(), sequence_length)
    for i in range(0, len(ids), batch_num_samples):
        yield load_batch(source, ids[i : i + batch_num_samples])


def num_traversal_batches(episode_lengths: np.ndarray, sequence_length: int, batch_num_samples: int) -> int:
    num_chunks = len(traversal_segment_ids(episode_lengths, sequence_length))
    return -(-num_chunks // batch_num_samples)


# ---------------------------------------------------------------------------------------------
# In-memory episodes
# ---------------------------------------------------------------------------------------------


class InMemoryEpisodes:
    """An :class:`~iris_core.data.structures.EpisodeSource` holding whole episodes in RAM."""

    def __init__(self, episodes: Sequence[Episode] = ()) -> None:
        self.episodes: list[Episode] = list(episodes)

    def add(self, episode: Episode) -> int:
        """Store a new episode; returns its id."""
        self.episodes.append(episode)
        return len(self.episodes) - 1

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def episode_lengths(self) -> np.ndarray:
        return np.array([len(e) for e in self.episodes], dtype=np.int64)

    def load_segments(self, segment_ids: Sequence[SegmentId]) -> list[Segment]:
        return [make_segment(self.episodes[s.episode_id], s) for s in segment_ids]
