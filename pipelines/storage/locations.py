"""Where stores live: plain paths and fsspec URLs (``memory://``, ``s3://``, ``file://``...).

Local paths go to zarr's ``LocalStore``, whose writes are atomic (temporary file + rename, which
is where stray ``*.partial`` files come from after a kill); any other URL goes through fsspec.
"""

from __future__ import annotations

import posixpath

import fsspec
from fsspec.implementations.local import LocalFileSystem
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

from pipelines import atomic


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem holding ``url`` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(str(url))
    return fs, path


def is_local(url: str) -> bool:
    return isinstance(filesystem(url)[0], LocalFileSystem)


def zarr_store(url: str, *, read_only: bool) -> Store:
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        return LocalStore(path, read_only=read_only)
    return FsspecStore.from_url(str(url), read_only=read_only)


def join(base: str, relative: str) -> str:
    """``relative`` resolved against the folder ``base`` (an absolute ``relative`` wins)."""
    if "://" in relative or relative.startswith("/"):
        return relative
    return posixpath.join(str(base).rstrip("/"), relative)


def parent(url: str) -> str:
    url = str(url).rstrip("/")
    head, _, _ = url.rpartition("/")
    return head if head else "."


def atomic_write_bytes(url: str, data: bytes) -> None:
    """Readers see either the old content or ``data``, never a mix.

    Locally: a temporary file in the same folder, then ``os.replace``. Elsewhere a single put,
    which object stores (and the memory filesystem) apply atomically.
    """
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        atomic.atomic_write_bytes(path, data)
    else:
        fs.pipe_file(path, data)
