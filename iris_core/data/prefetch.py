"""Batches sampled and collated in a background thread while the current step runs.

:class:`Prefetcher` wraps a ``next_batch`` function: a worker thread calls it ahead of time, up
to ``depth + 1`` batches in advance, and the training loop takes them in the order they were made,
so the batches are the same, in the same order, as calling ``next_batch`` directly. For a CUDA
device the batches are placed in pinned (page-locked) host memory, so that
``batch.to(device, non_blocking=True)`` is an asynchronous copy that overlaps the step.

The worker runs ahead of the loop: whatever ``next_batch`` advances (a sampler's random state and
counts) is up to ``depth + 1`` batches ahead of the batches used so far. ``snapshot``, called in
the worker right after each batch, captures that state; :attr:`Prefetcher.snapshot` is the
capture that belongs to the last batch returned, i.e. the state a checkpoint should hold. The
batches equal direct calls as long as nothing else changes what ``next_batch`` reads (e.g. new
episodes) while the prefetcher runs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import torch

from iris_core.data.structures import Batch

_S = TypeVar("_S")


class Prefetcher(Generic[_S]):
    """``prefetcher()`` returns what ``next_batch()`` would, made ahead of time in a thread.

    ``device``: where the batches will be used (pinned host memory when it is a CUDA device).
    ``depth``: batches queued in advance (at least 1; one more may wait for room). Call
    :meth:`close` (or use ``with``) to stop the thread; an exception raised by ``next_batch`` is
    raised by the call that would have returned that batch.
    """

    def __init__(
        self,
        next_batch: Callable[[], Batch],
        device: torch.device | str = "cpu",
        depth: int = 2,
        snapshot: Callable[[], _S] | None = None,
    ) -> None:
        assert depth >= 1, f"depth must be >= 1, got {depth}"
        self.next_batch = next_batch
        self.pin_memory = torch.device(device).type == "cuda" and torch.cuda.is_available()
        self.take_snapshot = snapshot
        self.snapshot: _S | None = None
        self._queue: queue.Queue[tuple[Batch | None, Any, BaseException | None]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="batch-prefetcher", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self.next_batch()
                if self.pin_memory:
                    batch = batch.pin_memory()
                item: tuple[Batch | None, Any, BaseException | None] = (
                    batch,
                    None if self.take_snapshot is None else self.take_snapshot(),
                    None,
                )
            except BaseException as error:  # handed to the consumer, which raises it
                item = (None, None, error)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return

    def __call__(self) -> Batch:
        if self._stop.is_set():
            raise RuntimeError("the prefetcher is closed")
        while True:
            try:
                batch, snapshot, error = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("the prefetching thread stopped") from None
        if error is not None:
            self.close()
            raise error
        assert batch is not None
        self.snapshot = snapshot
        return batch

    def close(self) -> None:
        """Stop the worker thread (the batches made in advance are dropped)."""
        self._stop.set()
        while True:  # unblock a worker waiting to put
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Prefetcher[_S]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
