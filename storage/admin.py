"""Atlas housekeeping: list versions with their status, and prune old ones on explicit request."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from loupe.storage import layout, manifest as manifests, publish
from loupe.storage.errors import StorageError
from loupe.storage.objects import ObjectStore
from loupe.storage.urls import resolve

CURRENT = "current"  # named by the pointer
PUBLISHED = "published"  # was current once
COMPLETE = "complete"  # sealed but never published (lost a publish race, or publish interrupted)
BUILDING = "building"  # draft: a build is running, or was interrupted


@dataclass(frozen=True)
class VersionInfo:
    version: str
    status: str
    created_at: str | None
    counts: dict
    config_sha256: str | None


def list_versions(url: str, storage_options: Mapping[str, Any] | None = None) -> list[VersionInfo]:
    """Every version under the atlas root, oldest first, with its status."""
    store = ObjectStore(resolve(url, storage_options))
    pointer = publish.read_pointer(store)
    current = pointer["version"] if pointer else None
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
                status = CURRENT
            elif store.exists(layout.published_marker(version)):
                status = PUBLISHED
            else:
                status = COMPLETE
        else:
            draft = store.get_optional(layout.draft_info(version))
            info = json.loads(draft) if draft else {}
            status = BUILDING
        out.append(VersionInfo(version, status, info.get("created_at"), info.get("counts") or {}, info.get("config_sha256")))
    return out


def prune(url: str, keep: int, storage_options: Mapping[str, Any] | None = None, *, drafts: bool = False,
          dry_run: bool = False) -> list[str]:
    """Delete published versions older than the newest `keep`; the current version is always kept.

    With drafts=True, also delete unpublished versions (complete or building) created before the
    current version: they can no longer be published, since the pointer moved past their base.
    Returns the deleted version ids.
    """
    if not isinstance(keep, int) or keep < 1:
        raise StorageError(f"prune: --keep must be a positive integer, got {keep!r}", url=url)
    store = ObjectStore(resolve(url, storage_options))
    versions = list_versions(url, storage_options)
    published = [v.version for v in versions if v.status in (CURRENT, PUBLISHED)]
    current = next((v.version for v in versions if v.status == CURRENT), None)
    kept = set(published[-keep:]) | ({current} if current else set())
    doomed = [v for v in published if v not in kept]
    if drafts and current:
        doomed += [v.version for v in versions if v.status in (COMPLETE, BUILDING) and v.version < current]
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
    from loupe.storage.writer import _item_keys

    layout.check_version_id(version)
    return _item_keys(ObjectStore(resolve(url, storage_options)), version)
