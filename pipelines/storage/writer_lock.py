"""One writer per store: an exclusive lock held for the lifetime of an ``EpisodeStoreWriter``.

A second writer on a live store would be fatal: reopening a store truncates what is not
committed yet, which for a live writer is the episode it is writing, and two writers appending
interleave their chunks. So opening or creating a writer takes the store's lock first, and fails
at once, naming the store and the holder, when another writer has it.

- Local stores: ``flock`` on ``.<store name>.writer-lock`` next to the store (outside it, so
  Zarr never sees a foreign file). The kernel drops the lock when its process dies, so a killed
  writer never leaves a stale lock; a closed writer removes the file.
- ``memory://`` stores live in one process: a registry of the stores with a live writer.
- Object stores (``s3://``...) have no locks: there, one writer per store is the caller's duty.
  So are local stores on a platform without ``fcntl`` (Windows).

A process forked while a writer is open does not inherit its lock: the child closes its copy of
the lock file at once and its copy of the writer refuses to append. Otherwise the child would keep
the store locked after its parent died, or unlock it under the live parent when it released.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref

from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from pipelines.storage import locations
from pipelines.storage.errors import StoreError

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None  # type: ignore[assignment]

_in_process: set[str] = set()
_in_process_guard = threading.Lock()
_live_locks: weakref.WeakSet[WriterLock] = weakref.WeakSet()
_fork_guard = threading.RLock()  # held while a lock file is taken and registered, and across fork


class WriterLock:
    """Held from :func:`acquire` until :meth:`release` (idempotent; also on garbage collection)."""

    def __init__(self, url: str, fd: int | None, lock_path: str | None, key: str | None) -> None:
        self.url = url
        self._fd = fd
        self._lock_path = lock_path
        self._key = key
        self.owner_pid = os.getpid()
        self.inherited = False  # a copy made by fork: held by the parent, not by this process
        if self.held:
            _live_locks.add(self)

    @property
    def held(self) -> bool:
        return self._fd is not None or self._key is not None

    def _drop_inherited(self) -> None:
        """In a forked child: close this process's copy of the lock file, leaving the lock (and
        its file) to the parent, which still holds it."""
        if self.held:
            self.inherited = True
        fd, self._fd, self._lock_path, self._key = self._fd, None, None, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if self._lock_path is not None:
                # Removed while still locked: a writer that opened this file before the removal
                # finds, once it holds the lock, that its file is no longer the one at the path,
                # and starts over (see ``_lock_file``).
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._lock_path)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        if self._key is not None:
            key, self._key = self._key, None
            with _in_process_guard:
                _in_process.discard(key)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # never raise from a finaliser
            self.release()


def _before_fork() -> None:
    # A lock file locked by one thread but not yet registered would reach the child untracked.
    _fork_guard.acquire()


def _after_fork_in_parent() -> None:
    _fork_guard.release()


def _after_fork_in_child() -> None:
    global _in_process_guard, _fork_guard
    _fork_guard = threading.RLock()
    for lock in list(_live_locks):
        lock._drop_inherited()
    _live_locks.clear()
    _in_process.clear()  # the child's memory stores are copies, with no writer of their own
    _in_process_guard = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
    )


def lock_path_of(url: str) -> str:
    """Where the lock file of the local store ``url`` lives."""
    _, path = locations.filesystem(url)
    path = path.rstrip("/")
    return os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.writer-lock")


def acquire(url: str) -> WriterLock:
    """The writer lock of the store at ``url``; raises :class:`StoreError` if another writer holds it."""
    fs, path = locations.filesystem(url)
    if isinstance(fs, LocalFileSystem) and fcntl is not None:
        lock_path = lock_path_of(url)
        # No fork between taking the lock and registering it (see ``_before_fork``).
        with _fork_guard:
            return WriterLock(url, _lock_file(url, lock_path), lock_path, None)
    if isinstance(fs, MemoryFileSystem):
        key = f"memory://{path.rstrip('/')}"
        with _in_process_guard:
            if key in _in_process:
                raise StoreError(
                    url, "is open for writing by another writer in this process (one writer per store)"
                )
            _in_process.add(key)
        return WriterLock(url, None, None, key)
    return WriterLock(url, None, None, None)


def _lock_file(url: str, lock_path: str) -> int:
    folder = os.path.dirname(lock_path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                url,
                f"is open for writing by another writer (process {holder}, lock {lock_path}); "
                "one writer per store at a time",
            ) from None
        try:
            same_file = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            return fd
        # The previous holder removed this file between our open and our lock: try again.
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
