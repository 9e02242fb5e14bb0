"""The atlas pointer (atlas.json) and its compare-and-swap, the only step that makes a version visible.

The swap is one conditional write (`ObjectStore.put_conditional`): on S3 a PutObject with
If-Match on the pointer's ETag (If-None-Match: * for the first publish), which S3, MinIO and moto
evaluate atomically per key; stores that accept those headers but ignore them are caught by
`probe.require_conditional_writes` before a build owns a draft. Locally an flock on .atlas.lock
serialises the compare and the rename of a temporary file over atlas.json, which readers see
atomically. Whatever the store answers, the outcome reported is the pointer read back afterwards.
"""

from __future__ import annotations

import json

from loupe.storage import layout
from loupe.storage.checksums import canonical_json
from loupe.storage.errors import PublishConflictError, StorageError
from loupe.storage.objects import ConditionFailedError, ObjectStore, Tagged


def parse_pointer(data: bytes | None, url: str) -> dict | None:
    if data is None:
        return None
    try:
        pointer = json.loads(data)
        layout.check_version_id(pointer["version"])
        pointer["manifest_sha256"]
    except (ValueError, KeyError, TypeError, StorageError) as exc:
        raise StorageError(f"unreadable atlas pointer {url}: {exc}", url=url) from exc
    return pointer


def read_pointer(store: ObjectStore) -> dict | None:
    """The current pointer, or None for an atlas that was never published."""
    return parse_pointer(store.get_optional(layout.POINTER), store.location.url_of(layout.POINTER))


def names(pointer: dict | None, new_pointer: dict) -> bool:
    """Whether `pointer` publishes exactly `new_pointer`'s version and manifest."""
    return bool(pointer) and pointer["version"] == new_pointer["version"] \
        and pointer["manifest_sha256"] == new_pointer["manifest_sha256"]


def swap_pointer(store: ObjectStore, expected_version: str | None, new_pointer: dict) -> None:
    """Replace the pointer with `new_pointer` only if it still names `expected_version`.

    Raises PublishConflictError when another publisher got there first. After any failed or
    ambiguous write the pointer is read back, so a write that landed although its answer was lost
    counts as published, and a conflict names the version that really is published.
    """
    url = store.location.url_of(layout.POINTER)
    current = store.get_tagged(layout.POINTER)
    found = _version_of(current, url)
    if found != expected_version:
        raise _conflict(store, expected_version, found, new_pointer["version"])
    try:
        store.put_conditional(layout.POINTER, canonical_json(new_pointer), expected_tag=current.tag if current else None)
        return
    except StorageError as exc:
        failure = exc
    try:
        now = read_pointer(store)
    except StorageError:
        raise failure from None
    if names(now, new_pointer):
        return
    if isinstance(failure, ConditionFailedError) or (now and now["version"] != expected_version):
        raise _conflict(store, expected_version, now["version"] if now else None, new_pointer["version"]) from failure
    raise failure


def _version_of(tagged: Tagged | None, url: str) -> str | None:
    pointer = parse_pointer(tagged.data if tagged else None, url)
    return pointer["version"] if pointer else None


def _conflict(store: ObjectStore, expected: str | None, found: str | None, version: str) -> PublishConflictError:
    url = store.location.url
    return PublishConflictError(
        f"cannot publish version {version} of atlas {url}: another build published "
        f"{found or 'a version'} since this build started from {expected or 'an empty atlas'}. "
        f"Version {version} is complete and left intact, unpublished, at "
        f"{store.location.url_of(layout.version_dir(version))}; rerun the build to publish on top of the "
        "new version (completed items are reused, not recomputed).",
        url=url,
    )
