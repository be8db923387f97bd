"""The segment sampler against exact distributions computed by enumeration (docs/method.md §3)."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import chisquare

from iris_core.config import ComponentTrainingConfig
from iris_core.data.sampler import (
    InMemoryEpisodes,
    SegmentSampler,
    load_batch,
    num_traversal_batches,
    traversal_segment_ids,
    traverse,
)
from iris_core.data.structures import Episode, SegmentId, make_segment


def episode(length: int, seed: int = 0) -> Episode:
    rng = np.random.default_rng(seed)
    end = np.zeros(length, np.uint8)
    end[-1] = 1
    return Episode(
        obs=rng.integers(0, 256, (length, 3, 4, 4), dtype=np.uint8),
        act=rng.integers(0, 5, length),
        rew=rng.normal(size=length).astype(np.float32),
        end=end,
        trunc=np.zeros(length, np.uint8),
    )


def exact_windows(
    lengths: list[int],
    L: int,  # noqa: N803 (the name in docs/method.md §3)
    beyond_end: bool,
) -> dict[tuple[int, int, int], Fraction]:
    """P(episode, start, stop) with equal priorities, by enumerating every (e, t, u) of docs/method.md §3."""
    probs: Counter[tuple[int, int, int]] = Counter()
    for e, n in enumerate(lengths):
        for t in range(n):
            for u in range(L):
                if beyond_end:
                    start = t - u
                    stop = start + L
                else:
                    stop = min(n, t + 1 + u)
                    start = stop - L
                probs[(e, start, stop)] += Fraction(1, len(lengths) * n * L)  # type: ignore[assignment]
    return dict(probs)


def draw(sampler: SegmentSampler, lengths: np.ndarray, batches: int) -> list[SegmentId]:
    return [s for _ in range(batches) for s in sampler.sample(lengths)]


@pytest.mark.parametrize("beyond_end", [True, False])
def test_window_placement_matches_enumeration(beyond_end: bool) -> None:
    lengths, L = [2, 5, 9], 4
    expected = exact_windows(lengths, L, beyond_end)
    assert sum(expected.values()) == 1
    sampler = SegmentSampler(L, 500, priority_alpha=5.0, can_sample_beyond_end=beyond_end, seed=1)
    ids = draw(sampler, np.array(lengths), 120)
    observed = Counter((s.episode_id, s.start, s.stop) for s in ids)
    assert set(observed) <= set(expected), set(observed) - set(expected)
    keys = sorted(expected)
    f_exp = np.array([float(expected[k]) for k in keys]) * len(ids)
    f_obs = np.array([observed[k] for k in keys])
    assert chisquare(f_obs, f_exp).pvalue > 1e-3


@pytest.mark.parametrize("beyond_end", [True, False])
def test_padding_frequencies(beyond_end: bool) -> None:
    """Per window position, how often it is a real frame: exact vs empirical, tight tolerance."""
    lengths, L = [3, 6], 4
    expected = np.zeros(L)
    for (e, start, _), p in exact_windows(lengths, L, beyond_end).items():
        expected += float(p) * (
            (np.arange(start, start + L) >= 0) & (np.arange(start, start + L) < lengths[e])
        )
    sampler = SegmentSampler(L, 1000, priority_alpha=1.0, can_sample_beyond_end=beyond_end, seed=2)
    ids = draw(sampler, np.array(lengths), 60)
    positions = np.array([s.start for s in ids])[:, None] + np.arange(L)
    episode_lengths = np.array([lengths[s.episode_id] for s in ids])[:, None]
    real = ((positions >= 0) & (positions < episode_lengths)).mean(0)
    assert np.abs(real - expected).max() < 0.01, (real, expected)
    if not beyond_end:
        assert real[-1] == 1.0  # always ends on a real frame: padding only on the left


def test_actor_critic_windows_never_pad_right() -> None:
    sampler = SegmentSampler(6, 300, priority_alpha=5.0, can_sample_beyond_end=False, seed=3)
    lengths = np.array([1, 2, 7, 30])
    for s in draw(sampler, lengths, 10):
        assert s.stop <= lengths[s.episode_id] and s.stop - s.start == 6 and s.stop >= 1


def test_priorities_follow_counts_by_hand() -> None:
    sampler = SegmentSampler(2, 1, priority_alpha=1.0, can_sample_beyond_end=True, counts=np.array([0, 1, 3]))
    # (1 + count) ** -1 = 1, 1/2, 1/4 -> normalised 4/7, 2/7, 1/7
    np.testing.assert_allclose(sampler.probabilities(3), [4 / 7, 2 / 7, 1 / 7])
    sampler.priority_alpha = 2.0  # 1, 1/4, 1/16 -> 16/21, 4/21, 1/21
    np.testing.assert_allclose(sampler.probabilities(3), [16 / 21, 4 / 21, 1 / 21])
    # A new episode starts at count 0, so it gets the top priority.
    np.testing.assert_allclose(sampler.probabilities(4), np.array([16, 4, 1, 16]) / 37)


def test_episode_draws_follow_priorities() -> None:
    sampler = SegmentSampler(3, 20_000, priority_alpha=1.0, can_sample_beyond_end=True, seed=4)
    sampler.counts = np.array([0, 1, 3, 0])
    ids = sampler.sample(np.array([5, 5, 5, 50]))
    f_obs = np.bincount([s.episode_id for s in ids], minlength=4)
    f_exp = np.array([1, 1 / 2, 1 / 4, 1]) / 2.75 * len(ids)
    assert chisquare(f_obs, f_exp).pvalue > 1e-3


def test_counts_updated_only_after_epoch_one() -> None:
    sampler = SegmentSampler(3, 64, priority_alpha=5.0, can_sample_beyond_end=True, seed=5)
    lengths = np.array([4, 8, 16])
    for _ in range(5):
        sampler.sample(lengths)
    np.testing.assert_array_equal(sampler.counts, [0, 0, 0])  # epoch 1: frozen
    np.testing.assert_allclose(sampler.probabilities(3), [1 / 3] * 3)

    sampler.update_counts = True
    seen = np.zeros(3, np.int64)
    for _ in range(5):
        seen += np.bincount([s.episode_id for s in sampler.sample(lengths)], minlength=3)
    np.testing.assert_array_equal(sampler.counts, seen)
    assert seen.sum() == 5 * 64


def test_counts_shift_sampling_towards_fresh_episodes() -> None:
    sampler = SegmentSampler(
        3, 32, priority_alpha=5.0, can_sample_beyond_end=True, seed=6, update_counts=True
    )
    for _ in range(50):
        sampler.sample(np.array([10, 10]))
    sampler.sample(np.array([10, 10, 10]))  # a new episode arrives with count 0
    assert sampler.counts[2] > 0 and len(sampler.counts) == 3
    # with alpha = 5 nearly all of the next draws go to the new episode until it catches up
    ids = sampler.sample(np.array([10, 10, 10]))
    assert sum(s.episode_id == 2 for s in ids) > 16


def test_growing_and_shrinking_datasets() -> None:
    sampler = SegmentSampler(3, 8, priority_alpha=5.0, can_sample_beyond_end=True, update_counts=True)
    sampler.sample(np.array([5]))
    assert sampler.counts.tolist() == [8]
    sampler.sample(np.array([5, 5]))
    assert len(sampler.counts) == 2
    with pytest.raises(AssertionError, match="shrank"):
        sampler.sample(np.array([5]))


def test_state_dict_resumes_identically() -> None:
    lengths = np.array([3, 9, 27])
    a = SegmentSampler(5, 16, priority_alpha=5.0, can_sample_beyond_end=False, seed=7, update_counts=True)
    for _ in range(3):
        a.sample(lengths)
    state = a.state_dict()
    b = SegmentSampler(5, 16, priority_alpha=5.0, can_sample_beyond_end=False, seed=99, update_counts=True)
    b.load_state_dict(state)
    assert [a.sample(lengths) for _ in range(3)] == [b.sample(lengths) for _ in range(3)]
    np.testing.assert_array_equal(a.counts, b.counts)
    assert state["counts"] is not a.counts  # a snapshot, not a view that later draws would change


def test_seeded_and_from_config() -> None:
    config = ComponentTrainingConfig(sequence_length=21, batch_num_samples=32, priority_alpha=5.0)
    lengths = np.array([30, 40])
    one = SegmentSampler.from_config(config, can_sample_beyond_end=True, seed=0)
    two = SegmentSampler.from_config(config, can_sample_beyond_end=True, seed=0)
    batch = one.sample(lengths)
    assert batch == two.sample(lengths) and len(batch) == 32
    assert all(s.stop - s.start == 21 for s in batch)


def test_load_batch_equals_make_segment() -> None:
    source = InMemoryEpisodes()
    for i, n in enumerate([1, 4, 11]):
        assert source.add(episode(n, i)) == i
    ids = SegmentSampler(6, 40, priority_alpha=5.0, can_sample_beyond_end=True, seed=8).sample(
        source.episode_lengths()
    )
    batch = load_batch(source, ids)
    assert batch.obs.shape == (40, 6, 3, 4, 4) and batch.segment_ids == ids
    for k, sid in enumerate(ids):
        ref = make_segment(source.episodes[sid.episode_id], sid)
        np.testing.assert_array_equal(batch.obs[k].numpy(), ref.obs)
        np.testing.assert_array_equal(batch.mask_padding[k].numpy(), ref.mask_padding)
        np.testing.assert_array_equal(batch.rew[k].numpy(), ref.rew)


def test_traversal_chunks_and_drops_single_frame_tails() -> None:
    lengths = np.array([5, 7, 1, 2, 3])
    ids = traversal_segment_ids(lengths, 3)
    assert ids == [
        SegmentId(0, 0, 3),
        SegmentId(0, 3, 6),  # 2 real frames: kept
        SegmentId(1, 0, 3),
        SegmentId(1, 3, 6),  # (1, 6, 9) has 1 real frame: dropped
        SegmentId(3, 0, 3),  # episode 2 (1 frame) contributes nothing
        SegmentId(4, 0, 3),
    ]
    source = InMemoryEpisodes([episode(int(n), i) for i, n in enumerate(lengths)])
    batches = list(traverse(source, 3, 4))
    assert [len(b.segment_ids) for b in batches] == [4, 2]
    assert num_traversal_batches(lengths, 3, 4) == 2
    assert batches[0].mask_padding[1].tolist() == [True, True, False]
    assert sum(b.mask_padding.sum().item() for b in batches) == 5 + 6 + 2 + 3
