"""The dataset manifest: the ordered list of the stores that make up a dataset.

A small JSON file, e.g. ``data/episodes/manifest.json``::

    {"manifest_version": 1, "stores": ["0.zarr", "1.zarr", "2.zarr"]}

Store locations are relative to the manifest's folder (or absolute URLs). Order matters: the parts
of an episode that spans iterations appear in consecutive stores in this order. The file is
replaced atomically, so a reader never sees half a list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pipelines.storage import locations
from pipelines.storage.errors import SchemaVersionError, StoreCorruptedError, StoreNotFoundError

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class DatasetManifest:
    stores: tuple[str, ...] = ()

    def with_store(self, store: str) -> DatasetManifest:
        if store in self.stores:
            return self
        return DatasetManifest((*self.stores, store))

    def store_urls(self, manifest_url: str) -> list[str]:
        folder = locations.parent(manifest_url)
        return [locations.join(folder, store) for store in self.stores]


def read_manifest(url: str) -> DatasetManifest:
    fs, path = locations.filesystem(url)
    if not fs.exists(path):
        raise StoreNotFoundError(url, "no dataset manifest here")
    try:
        content = json.loads(fs.cat_file(path))
        version, stores = content["manifest_version"], content["stores"]
    except (ValueError, KeyError, TypeError) as error:
        raise StoreCorruptedError(url, f"unreadable dataset manifest: {error!r}") from None
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise SchemaVersionError(url, f"manifest version {version!r}; this code reads <= {MANIFEST_VERSION}")
    if (
        not isinstance(stores, list)
        or not all(isinstance(s, str) for s in stores)
        or len(set(stores)) != len(stores)
    ):
        raise StoreCorruptedError(url, "'stores' must be a list of distinct strings")
    return DatasetManifest(tuple(stores))


def write_manifest(url: str, manifest: DatasetManifest) -> None:
    payload = {"manifest_version": MANIFEST_VERSION, "stores": list(manifest.stores)}
    locations.atomic_write_bytes(url, (json.dumps(payload, indent=1) + "\n").encode())
