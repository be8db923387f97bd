"""Atomic file writes: the project's one helper (a reader sees the old file or the new one, never
half of one, and a killed writer leaves the old file in place).

A temporary file in the target's folder is written, flushed to disk, then renamed over the target
(``os.replace`` is atomic within a filesystem). The temporary name starts with a dot and ends in
``.partial``, so a kill between the two steps leaves only such a file behind, which nothing reads.
A failure (a full disk, a read-only folder) removes the temporary file, and the folders created
for it, and re-raises.

Test hook: with ``IRIS_TEST_NO_SPACE=<pattern>`` in the environment, writing a file whose name
matches the ``fnmatch`` pattern fails as a full disk would (``OSError(ENOSPC)`` naming the file,
after part of it was written).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import io
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

NO_SPACE = "IRIS_TEST_NO_SPACE"


def _fail_if_told(target: Path) -> None:
    pattern = os.environ.get(NO_SPACE)
    if pattern and fnmatch.fnmatch(target.name, pattern):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[Path]:
    missing = [p for p in path.parents if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.partial"
    done = False
    try:
        yield tmp
        done = True
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        if not done:  # the folders made for the file go with it (deepest first; only if empty)
            for folder in missing:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(file)`` on a temporary file, then move it to ``path`` atomically."""
    target = Path(path)
    with _temporary_beside(target) as tmp, _naming(target, tmp):
        with tmp.open("wb") as f:
            write(f)
            _fail_if_told(target)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)


@contextlib.contextmanager
def _naming(target: Path, tmp: Path) -> Iterator[None]:
    """An OSError of the write names the file being written (a failed ``write()`` names no file;
    one of the temporary file names a name the user never asked for)."""
    try:
        yield
    except OSError as error:
        if error.filename is None or os.fsdecode(error.filename) == str(tmp):
            raise OSError(error.errno, error.strerror, str(target)) from error
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: object, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to ``path`` atomically (serialised in memory first: one write, one rename)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, create: bool = True) -> Iterator[Path]:
    """Build a folder under a temporary name and move it to ``path`` when the block succeeds.

    ``path`` must not exist yet (a folder cannot replace another atomically). With
    ``create=False`` the temporary folder is left for the block to create (e.g. a Zarr store).
    """
    target = Path(path)
    if target.exists():
        raise FileExistsError(f"{target} exists already")
    with _temporary_beside(target) as tmp:
        if create:
            tmp.mkdir()
        yield tmp
        os.replace(tmp, target)
