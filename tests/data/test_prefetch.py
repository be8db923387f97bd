"""The prefetcher yields exactly the batches of the wrapped loader, in order, and stops cleanly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from iris_core.data.prefetch import Prefetcher
from iris_core.data.sampler import InMemoryEpisodes, SegmentSampler, load_batch
from iris_core.data.structures import Batch, Episode


def episode(length: int, seed: int) -> Episode:
    rng = np.random.default_rng(seed)
    end = np.zeros(length, np.uint8)
    end[-1] = 1
    return Episode(
        obs=rng.integers(0, 256, (length, 3, 8, 8), dtype=np.uint8),
        act=rng.integers(0, 5, length),
        rew=rng.normal(size=length).astype(np.float32),
        end=end,
        trunc=np.zeros(length, np.uint8),
    )


def loader(seed: int = 3) -> tuple[Callable[[], Batch], SegmentSampler]:
    """A seeded sampler over in-memory episodes, as a training stage draws its batches."""
    source = InMemoryEpisodes([episode(n, i) for i, n in enumerate((7, 30, 12, 50))])
    sampler = SegmentSampler(
        sequence_length=6, batch_num_samples=4, priority_alpha=1.0, can_sample_beyond_end=False,
        seed=seed, update_counts=True,
    )  # fmt: skip

    def next_batch() -> Batch:
        return load_batch(source, sampler.sample(source.episode_lengths()))

    return next_batch, sampler


def assert_same(a: Batch, b: Batch) -> None:
    assert a.segment_ids == b.segment_ids
    for field in ("obs", "act", "rew", "end", "mask_padding"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.parametrize("depth", [1, 3])
def test_same_batches_in_the_same_order_as_the_sampler(depth: int) -> None:
    direct, _ = loader()
    expected = [direct() for _ in range(12)]
    next_batch, sampler = loader()
    with Prefetcher(next_batch, "cpu", depth=depth, snapshot=sampler.state_dict) as prefetcher:
        for i, batch in enumerate(expected):
            assert_same(prefetcher(), batch)
            # The snapshot is the sampler's state right after this batch, not after the ones ahead.
            replay, replay_sampler = loader()
            for _ in range(i + 1):
                replay()
            snapshot: Any = prefetcher.snapshot
            assert np.array_equal(snapshot["counts"], replay_sampler.state_dict()["counts"])
            assert snapshot["rng"] == replay_sampler.state_dict()["rng"]


def test_it_works_ahead_of_the_consumer() -> None:
    calls: list[int] = []
    made = threading.Event()

    def next_batch() -> Batch:
        calls.append(len(calls))
        if len(calls) == 4:
            made.set()
        return loader()[0]()

    with Prefetcher(next_batch, depth=2) as prefetcher:
        prefetcher()
        assert made.wait(timeout=10), "the worker did not make the next batches in advance"
        time.sleep(0.2)
        # One consumed, two queued, one made and waiting for room: depth + 1 ahead at most.
        assert len(calls) == 4


def test_errors_reach_the_consumer_in_order() -> None:
    count = 0

    def next_batch() -> Batch:
        nonlocal count
        count += 1
        if count == 3:
            raise ValueError("no more episodes")
        return loader()[0]()

    prefetcher = Prefetcher(next_batch, depth=4)
    prefetcher()
    prefetcher()
    with pytest.raises(ValueError, match="no more episodes"):
        prefetcher()
    with pytest.raises(RuntimeError, match="closed"):
        prefetcher()


def test_close_stops_a_worker_blocked_on_a_full_queue() -> None:
    prefetcher = Prefetcher(loader()[0], depth=1)
    time.sleep(0.2)  # the worker has filled the queue and waits
    prefetcher.close()
    assert not prefetcher._thread.is_alive()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_batches_for_a_cuda_device_are_pinned() -> None:
    with Prefetcher(loader()[0], "cuda") as prefetcher:
        batch = prefetcher()
    assert batch.obs.is_pinned() and batch.act.is_pinned()
