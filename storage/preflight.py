"""A cheap check, before any compute starts, that an atlas URL can be written."""

from __future__ import annotations

import os
from typing import Any, Mapping

from loupe.storage.errors import StorageError
from loupe.storage.objects import ObjectStore, describe_failure
from loupe.storage.urls import merge_options, resolve

#: Fewer retries than normal: a preflight should fail in seconds when storage is unreachable.
_PREFLIGHT_S3 = {"config_kwargs": {"retries": {"max_attempts": 2}, "connect_timeout": 5, "read_timeout": 20}}


def check_writable(url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write, read back and delete a small probe object under the atlas root.

    Raises StorageError naming the URL for a malformed URL, an unknown protocol, a missing bucket,
    missing permissions or an unreachable endpoint. Costs a handful of requests.
    """
    options = dict(storage_options or {})
    if url.split("://", 1)[0].lower() in ("s3", "s3a") and "://" in url:
        options = merge_options(_PREFLIGHT_S3, options)
    location = resolve(url, options)
    if location.is_local and os.path.exists(location.root) and not os.path.isdir(location.root):
        raise StorageError(f"atlas URL {url!r} points at a file, not a folder: {location.root}", url=url)
    if location.is_s3:
        location.fs.retries = 1  # this instance is only used by preflights (distinct options)
        bucket = location.root.split("/", 1)[0]
        try:
            location.fs.call_s3("head_bucket", Bucket=bucket)
        except Exception as exc:
            reason = describe_failure(exc)
            missing = isinstance(exc, FileNotFoundError) or reason == "the bucket does not exist" or "404" in str(exc)
            if missing:
                raise StorageError(f"atlas URL {url!r}: bucket {bucket!r} does not exist", url=url) from exc
            if not reason.startswith("permission denied"):
                raise StorageError(f"atlas URL {url!r}: bucket {bucket!r} is not reachable: {reason}", url=url) from exc
            # Prefix-scoped policies often deny HeadBucket yet allow writes: let the probe decide.
    store = ObjectStore(location)
    probe = f".loupe-probe-{os.urandom(6).hex()}"
    payload = b"loupe write probe\n"
    try:
        store.put(probe, payload)
        if store.get(probe) != payload:
            raise StorageError(f"atlas URL {url!r}: a probe object read back different bytes", url=url)
    except StorageError as exc:
        raise StorageError(f"atlas URL {url!r} is not writable: {exc}", url=url) from exc
    finally:
        try:
            store.delete(probe)
        except StorageError:
            pass
