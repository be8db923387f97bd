"""Atomic file writes: the project's one helper (a reader sees the old file or the new one, never
half of one, and a killed writer leaves the old file in place).

A temporary file in the target's folder is written, flushed to disk, then renamed over the target
(``os.replace`` is atomic within a filesystem). The temporary name starts with a dot and ends in
``.partial``, so a kill between the two steps leaves only such a file behind, which nothing reads.
A failure (a full disk, a read-only folder) removes the temporary file and re-raises.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.partial"
    try:
        yield tmp
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(file)`` on a temporary file, then move it to ``path`` atomically."""
    target = Path(path)
    with _temporary_beside(target) as tmp:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)


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
