"""Loupe's atlas store: versioned Zarr v3 arrays and Parquet tables on a local folder or any fsspec
URL (S3 first), written by many workers at once and published atomically. No torch in here.

Write side: `AtlasWriter.create(url, ...)` -> declare arrays -> `with writer.item(key) as item:`
write renders / activations / tables -> `writer.reuse_items(...)` for unchanged items ->
`writer.publish()`. Read side: `open_atlas(url)`. See docs/storage.md for the layout.
"""

from loupe.storage.activations import plan_image_chunks
from loupe.storage.build_state import BuildState
from loupe.storage.admin import AtlasState, VersionInfo, current_version, item_keys, list_versions, prune, read_state
from loupe.storage.errors import ChecksumError, PublishConflictError, StorageError, VersionNotFoundError
from loupe.storage.preflight import check_writable
from loupe.storage.reader import Atlas, RangeReadError, open_atlas
from loupe.storage.guarded_store import MissingObjectError
from loupe.storage.item_writer import ItemWriter
from loupe.storage.lease import LeaseHeldError, LeaseLostError
from loupe.storage.probe import ConditionalWritesIgnoredError
from loupe.storage.status import VersionStatus
from loupe.storage.writer import AtlasWriter

__all__ = [
    "Atlas",
    "AtlasState",
    "AtlasWriter",
    "BuildState",
    "ChecksumError",
    "ConditionalWritesIgnoredError",
    "ItemWriter",
    "LeaseHeldError",
    "LeaseLostError",
    "MissingObjectError",
    "PublishConflictError",
    "RangeReadError",
    "StorageError",
    "VersionInfo",
    "VersionNotFoundError",
    "VersionStatus",
    "check_writable",
    "current_version",
    "item_keys",
    "list_versions",
    "open_atlas",
    "plan_image_chunks",
    "prune",
    "read_state",
]
