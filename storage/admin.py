"""Atlas housekeeping: one snapshot of an atlas's state, version statuses, and pruning on request."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from loupe.storage import layout, manifest as manifests, publish
from loupe.storage.errors import StorageError
from loupe.storage.lease import read_lease
from loupe.storage.objects import ObjectStore
from loupe.storage.status import VersionStatus
from loupe.storage.urls import resolve


@dataclass(frozen=True)
class VersionInfo:
    version: str
    status: VersionStatus
    created_at: str | None
    counts: dict
    config_sha256: str | None
    base_version: str | None = None
    code_version: str | None = None


@dataclass(frozen=True)
class AtlasState:
    """What a build needs to know about an atlas, read once: the pointer, every version, and the
    item keys of the published version."""

    pointer: dict | None
    versions: tuple[VersionInfo, ...]
    current_items: frozenset[str] = field(default_factory=frozenset)

    @property
    def current(self) -> str | None:
        return self.pointer["version"] if self.pointer else None

    def info(self, version: str | None) -> VersionInfo | None:
        return next((v for v in self.versions if v.version == version), None)

    def unpublished(self) -> list[VersionInfo]:
        """Sealed-but-unpublished and building versions, newest first."""
        return [v for v in reversed(self.versions) if v.status in (VersionStatus.COMPLETE, VersionStatus.BUILDING)]


def read_state(url: str, storage_options: Mapping[str, Any] | None = None, *, with_items: bool = True) -> AtlasState:
    """Snapshot the atlas: pointer (1 GET), versions (1 LIST + 1-2 requests each) and, with
    `with_items`, the published version's item keys (1 paginated LIST)."""
    store = ObjectStore(resolve(url, storage_options))
    pointer = publish.read_pointer(store)
    versions = tuple(_versions(store, pointer["version"] if pointer else None))
    items = frozenset(_item_keys(store, pointer["version"])) if with_items and pointer else frozenset()
    return AtlasState(pointer, versions, items)


def _versions(store: ObjectStore, current: str | None) -> list[VersionInfo]:
    out = []
    for version in store.list_dirs(layout.VERSIONS):
        try:
            layout.check_version_id(version)
        except StorageError:
            continue
        raw = store.get_optional(layout.manifest(version))
        if raw is not None:
            info = manifests.parse(raw, store.location.url_of(layout.manifest(version)))
            if version == current:
                status = VersionStatus.CURRENT
            elif store.exists(layout.published_marker(version)):
                status = VersionStatus.PUBLISHED
            else:
                status = VersionStatus.COMPLETE
        else:
            draft = store.get_optional(layout.draft_info(version))
            info = json.loads(draft) if draft else {}
            status = VersionStatus.BUILDING
        out.append(VersionInfo(version, status, info.get("created_at"), info.get("counts") or {},
                               info.get("config_sha256"), info.get("base_version"), info.get("code_version")))
    return out


def list_versions(url: str, storage_options: Mapping[str, Any] | None = None) -> list[VersionInfo]:
    """Every version under the atlas root, oldest first, with its status."""
    return list(read_state(url, storage_options, with_items=False).versions)


def prune(url: str, keep: int, storage_options: Mapping[str, Any] | None = None, *, drafts: bool = False,
          dry_run: bool = False) -> list[str]:
    """Delete published versions older than the newest `keep`; the current version is always kept.

    With drafts=True, also delete unpublished versions (complete or building) created before the
    current version: they can no longer be published, since the pointer moved past their base.
    A draft whose lease is live belongs to a running build and is never deleted.
    Returns the deleted version ids.
    """
    if not isinstance(keep, int) or keep < 1:
        raise StorageError(f"prune: --keep must be a positive integer, got {keep!r}", url=url)
    store = ObjectStore(resolve(url, storage_options))
    state = read_state(url, storage_options, with_items=False)
    published = [v.version for v in state.versions if v.status in (VersionStatus.CURRENT, VersionStatus.PUBLISHED)]
    current = state.current
    kept = set(published[-keep:]) | ({current} if current else set())
    doomed = [v for v in published if v not in kept]
    if drafts and current:
        for info in state.unpublished():
            if info.version < current:
                lease = read_lease(store, info.version)
                if lease is None or not lease.is_live():
                    doomed.append(info.version)
    for version in sorted(doomed):
        if not dry_run:
            # Remove the manifest first, so an interrupted prune never leaves a half-deleted
            # version that still looks complete.
            store.delete(layout.manifest(version))
            store.delete_tree(layout.version_dir(version))
    return sorted(doomed)


def current_version(url: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The version the pointer names now, or None for an atlas never published."""
    pointer = publish.read_pointer(ObjectStore(resolve(url, storage_options)))
    return pointer["version"] if pointer else None


def item_keys(url: str, version: str, storage_options: Mapping[str, Any] | None = None) -> set[str]:
    """Keys of the completed work items of a version (one paginated LIST), for incremental builds."""
    layout.check_version_id(version)
    return _item_keys(ObjectStore(resolve(url, storage_options)), version)


def _item_keys(store: ObjectStore, version: str) -> set[str]:
    from loupe.storage.writer import _item_keys as keys

    return keys(store, version)
