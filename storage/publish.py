"""The atlas pointer (atlas.json) and its compare-and-swap, the only step that makes a version visible.

- S3: the pointer is read with its ETag and replaced with a conditional PutObject (If-Match, or
  If-None-Match: * for the first publish). S3 (since 2024), MinIO and moto evaluate these
  atomically per key; a store that ignores or rejects them is reported, never silently trusted.
- Local folder: an exclusive flock on .atlas.lock serialises publishers (the kernel drops it if the
  process dies, so no stale locks); the new pointer is written to a temporary file, fsynced and
  renamed over atlas.json, which readers see atomically.
- Other fsspec stores (memory:// for example): a process-wide lock; safe only within one process.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from contextlib import contextmanager
from typing import Iterator

from loupe.storage import layout
from loupe.storage.checksums import canonical_json
from loupe.storage.errors import PublishConflictError, StorageError
from loupe.storage.objects import ObjectStore, describe_failure

_PROCESS_LOCK = threading.Lock()


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


def swap_pointer(store: ObjectStore, expected_version: str | None, new_pointer: dict) -> None:
    """Replace the pointer with `new_pointer` only if it still names `expected_version`.

    Raises PublishConflictError when another publisher got there first.
    """
    data = canonical_json(new_pointer)
    if store.location.is_s3:
        _swap_s3(store, expected_version, new_pointer, data)
    elif store.location.is_local:
        with _local_lock(store):
            _check_expected(store, read_pointer(store), expected_version, new_pointer)
            _replace_local(os.path.join(store.location.root, layout.POINTER), data)
    else:
        warnings.warn(
            f"{store.location.url}: no atomic compare-and-swap for protocol {store.location.protocol!r}; "
            "publishing is only safe against publishers in this process",
            stacklevel=3,
        )
        with _PROCESS_LOCK:
            _check_expected(store, read_pointer(store), expected_version, new_pointer)
            store.put(layout.POINTER, data)


def _check_expected(store: ObjectStore, current: dict | None, expected: str | None, new_pointer: dict) -> None:
    found = current["version"] if current else None
    if found != expected:
        raise _conflict(store, expected, found, new_pointer["version"])


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


def _s3_error_code(exc: BaseException) -> str:
    for candidate in (exc, exc.__cause__, exc.__context__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            return response.get("Error", {}).get("Code", "")
    return ""


def _swap_s3(store: ObjectStore, expected: str | None, new_pointer: dict, data: bytes) -> None:
    from fsspec.asyn import sync

    fs = store.fs
    path = store.location.path(layout.POINTER)
    bucket, key, _ = fs.split_path(path)
    url = store.location.url_of(layout.POINTER)

    async def get_with_etag() -> tuple[bytes | None, str | None]:
        try:
            response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None, None
        try:
            return await response["Body"].read(), response["ETag"]
        finally:
            response["Body"].close()

    try:
        body, etag = sync(fs.loop, get_with_etag)
    except Exception as exc:
        raise StorageError(f"cannot read atlas pointer {url}: {describe_failure(exc)}", url=url) from exc
    _check_expected(store, parse_pointer(body, url), expected, new_pointer)
    condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
    try:
        fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, ContentType="application/json", **condition)
    except Exception as exc:
        code = _s3_error_code(exc)
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or isinstance(exc, FileExistsError):
            current = None
            try:
                current = read_pointer(store)
            except StorageError:
                pass
            raise _conflict(store, expected, current["version"] if current else None, new_pointer["version"]) from exc
        if code in ("NotImplemented", "InvalidArgument"):
            raise StorageError(
                f"cannot publish to {url}: the store rejected a conditional write ({code}); Loupe needs S3 "
                "conditional writes (If-Match / If-None-Match on PutObject) to publish safely",
                url=url,
            ) from exc
        raise StorageError(f"cannot write atlas pointer {url}: {describe_failure(exc)}", url=url) from exc
    finally:
        fs.invalidate_cache(path)


@contextmanager
def _local_lock(store: ObjectStore) -> Iterator[None]:
    import fcntl

    os.makedirs(store.location.root, exist_ok=True)
    path = os.path.join(store.location.root, layout.LOCK)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _replace_local(path: str, data: bytes) -> None:
    directory = os.path.dirname(path)
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
