"""One writer per store: a second writer is refused, before it touches anything."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from storage_helpers import assert_same_episode, make_episode

from pipelines.storage import EpisodeStore, EpisodeStoreWriter, StoreAttributes, StoreError, writer_lock
from pipelines.storage.writer_lock import lock_path_of


def attributes() -> StoreAttributes:
    return StoreAttributes("breakout", seed=0, iteration=1, policy_version=0)


@pytest.fixture(params=["local", "memory"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "1.zarr")
    return f"memory://{uuid.uuid4().hex}/1.zarr"


def test_a_second_writer_is_refused_and_the_first_keeps_writing(url: str) -> None:
    first = EpisodeStoreWriter.create(url, attributes())
    committed = make_episode(40, seed=0)
    first.append(committed, episode_id=0)
    with pytest.raises(StoreError, match="another writer") as error:
        EpisodeStoreWriter.open(url)
    assert error.value.store == url
    with pytest.raises(StoreError, match="another writer"):
        EpisodeStoreWriter.create(url, attributes())
    # The refused writers changed nothing; the first one goes on.
    later = make_episode(7, seed=1)
    first.append(later, episode_id=1)
    first.close()
    with pytest.raises(StoreError, match="closed"):
        first.append(later, episode_id=2)
    with EpisodeStoreWriter.open(url) as second:
        assert second.num_parts == 2
    store = EpisodeStore(url)
    assert_same_episode(store.read_part(0), committed)
    assert_same_episode(store.read_part(1), later)


def test_the_lock_goes_with_the_writer(tmp_path: Path) -> None:
    url = str(tmp_path / "1.zarr")
    writer = EpisodeStoreWriter.create(url, attributes())
    lock_file = Path(lock_path_of(url))
    assert lock_file.parent == tmp_path and lock_file.read_text() == str(os.getpid())
    assert not lock_file.is_relative_to(Path(url))  # outside the store: Zarr never sees it
    del writer  # garbage collection releases it too
    assert not lock_file.exists()
    EpisodeStoreWriter.open(url).close()
    assert not lock_file.exists()


def _hold_writer(url: str, ready: Any) -> None:
    writer = EpisodeStoreWriter.open(url)
    ready.set()
    signal.pause()  # holds the writer until killed
    writer.close()


def test_a_writer_in_another_process_blocks_until_it_dies(tmp_path: Path) -> None:
    """The lock of a killed writer is gone with its process: no stale lock to clean up."""
    url = str(tmp_path / "1.zarr")
    EpisodeStoreWriter.create(url, attributes()).close()
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    child = context.Process(target=_hold_writer, args=(url, ready), daemon=True)
    child.start()
    try:
        assert ready.wait(timeout=60)
        with pytest.raises(StoreError, match=f"process {child.pid}"):
            EpisodeStoreWriter.open(url)
    finally:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    with EpisodeStoreWriter.open(url) as writer:
        writer.append(make_episode(5, seed=0), episode_id=0)
    assert EpisodeStore(url).num_frames == 5


def _use_the_inherited_copy(writer: EpisodeStoreWriter, messages: Any) -> None:
    try:
        writer.append(make_episode(3, seed=2), episode_id=9)
        messages.put("appended")
    except StoreError as error:
        messages.put(str(error))
    writer.close()  # the copy's close must leave the parent's lock alone
    del writer
    messages.put("closed")


def test_a_forked_copy_of_a_writer_neither_writes_nor_unlocks(tmp_path: Path) -> None:
    url = str(tmp_path / "1.zarr")
    writer = EpisodeStoreWriter.create(url, attributes())
    writer.append(make_episode(4, seed=0), episode_id=0)
    context = multiprocessing.get_context("fork")
    messages = context.Queue()
    child = context.Process(target=_use_the_inherited_copy, args=(writer, messages))
    child.start()
    refusal, closed = messages.get(timeout=60), messages.get(timeout=60)
    child.join()
    assert "copied into this one by fork" in refusal and f"process {os.getpid()}" in refusal
    assert closed == "closed"
    # The parent still holds the lock, its file is still there, and it goes on writing.
    assert Path(lock_path_of(url)).read_text() == str(os.getpid())
    with pytest.raises(StoreError, match="another writer"):
        EpisodeStoreWriter.open(url)
    writer.append(make_episode(6, seed=1), episode_id=1)
    writer.close()
    assert len(EpisodeStore(url).parts) == 2


def _writer_with_a_forked_child(url: str, child_pids: Any) -> None:
    writer = EpisodeStoreWriter.open(url)  # held until this process is killed
    pid = os.fork()
    if pid == 0:  # a worker forked while the writer is open, outliving its parent
        signal.pause()
        os._exit(0)
    child_pids.put(pid)
    signal.pause()
    writer.close()


def test_a_killed_writer_frees_the_store_even_if_its_forked_children_live_on(tmp_path: Path) -> None:
    url = str(tmp_path / "1.zarr")
    EpisodeStoreWriter.create(url, attributes()).close()
    context = multiprocessing.get_context("fork")
    child_pids = context.Queue()
    writer_process = context.Process(target=_writer_with_a_forked_child, args=(url, child_pids), daemon=True)
    writer_process.start()
    orphan = child_pids.get(timeout=60)
    try:
        with pytest.raises(StoreError, match=f"process {writer_process.pid}"):
            EpisodeStoreWriter.open(url)
        assert writer_process.pid is not None
        os.kill(writer_process.pid, signal.SIGKILL)
        writer_process.join()
        with EpisodeStoreWriter.open(url) as writer:  # the orphan does not hold the lock
            writer.append(make_episode(5, seed=0), episode_id=0)
    finally:
        os.kill(orphan, signal.SIGKILL)
    assert EpisodeStore(url).num_frames == 5


def _open_lock_fds(lock_file: str, results: Any) -> None:
    fds = os.listdir("/proc/self/fd")
    results.put([fd for fd in fds if os.path.realpath(f"/proc/self/fd/{fd}") == lock_file])


def test_a_fork_while_another_thread_takes_the_lock_leaves_the_child_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock file is taken and registered with forks held off, so no fork lands in between."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc")
    url = str(tmp_path / "1.zarr")
    EpisodeStoreWriter.create(url, attributes()).close()
    locked = threading.Event()
    real_lock_file = writer_lock._lock_file

    def slow_lock_file(store: str, lock_path: str) -> int:
        fd = real_lock_file(store, lock_path)
        locked.set()
        time.sleep(0.5)  # a fork now would copy a locked fd that no WriterLock tracks yet
        return fd

    monkeypatch.setattr(writer_lock, "_lock_file", slow_lock_file)
    writers: list[EpisodeStoreWriter] = []
    opener = threading.Thread(target=lambda: writers.append(EpisodeStoreWriter.open(url)))
    opener.start()
    assert locked.wait(timeout=60)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_open_lock_fds, args=(os.path.realpath(lock_path_of(url)), results))
    child.start()  # waits for the opener to register its lock
    inherited = results.get(timeout=60)
    child.join()
    opener.join()
    assert inherited == []
    writers[0].close()
