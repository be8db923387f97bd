"""Episode storage: immutable Zarr stores per collection, a manifest per dataset, a dataset reader
that implements ``iris_core``'s ``EpisodeSource``, and the pandera-validated episode table."""

from pipelines.storage.dataset import ZarrEpisodeDataset
from pipelines.storage.episode_store import SCHEMA_VERSION, EpisodeStore, StoreAttributes, StoredPart
from pipelines.storage.errors import (
    SchemaVersionError,
    StoreCorruptedError,
    StoreError,
    StoreNotFoundError,
    TableValidationError,
)
from pipelines.storage.manifest import DatasetManifest, read_manifest, write_manifest
from pipelines.storage.store_writer import EpisodeStoreWriter
from pipelines.storage.tables import CRAFTER_ACHIEVEMENTS, EpisodeTable, validate_table

__all__ = [
    "CRAFTER_ACHIEVEMENTS",
    "SCHEMA_VERSION",
    "DatasetManifest",
    "EpisodeStore",
    "EpisodeStoreWriter",
    "EpisodeTable",
    "SchemaVersionError",
    "StoreAttributes",
    "StoreCorruptedError",
    "StoreError",
    "StoreNotFoundError",
    "StoredPart",
    "TableValidationError",
    "ZarrEpisodeDataset",
    "read_manifest",
    "validate_table",
    "write_manifest",
]
