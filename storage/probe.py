"""Does this store enforce conditional writes? Asked once per build, before it owns a draft.

Draft leases and the pointer swap rely on PutObject's If-None-Match / If-Match being enforced.
Some S3-compatible servers (and proxies in front of them) accept the headers and ignore them;
there two racing publishers both "win" and one publish is silently lost. So before a build takes
a lease, it writes a scratch object and then asks for two writes that must be refused: a create
with If-None-Match: * over it, and a replace with If-Match naming a wrong ETag. If either is
applied, the build refuses to run rather than publish unsafely. Local folders use flock and
need no probe.
"""

from __future__ import annotations

import os
import threading

from loupe.storage import layout
from loupe.storage.errors import StorageError
from loupe.storage.objects import ObjectStore, condition_refused, s3_error_code

_checked: set[tuple[str, str]] = set()
_checked_lock = threading.Lock()


class ConditionalWritesIgnoredError(StorageError):
    """The store applied a conditional write whose condition was false."""


def _endpoint(store: ObjectStore) -> str:
    client_kwargs = store.location.options.get("client_kwargs") or {}
    return client_kwargs.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") \
        or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"


def require_conditional_writes(store: ObjectStore) -> None:
    """Raise ConditionalWritesIgnoredError naming the store if it ignores conditional writes.

    Costs four requests once per process and store (a build is one process on its driver).
    """
    if not store.location.is_s3:
        return
    endpoint = _endpoint(store)
    key = (endpoint, store.location.root.split("/", 1)[0])
    with _checked_lock:
        if key in _checked:
            return
    rel = f"{layout.BUILD_STATE}/conditional-write-probe-{os.urandom(6).hex()}"
    bucket, object_key, _ = store.fs.split_path(store.location.path(rel))
    store.put(rel, b"probe\n")
    try:
        ignored = [header for header, condition in (("If-None-Match: *", {"IfNoneMatch": "*"}),
                                                     ("If-Match: <wrong ETag>", {"IfMatch": '"0123456789abcdef0123456789abcdef"'}))
                   if _applied(store, bucket, object_key, condition)]
    finally:
        try:
            store.delete(rel)
        except StorageError:
            pass
    if ignored:
        url = store.location.url
        raise ConditionalWritesIgnoredError(
            f"the S3 store at {endpoint} (atlas {url}) ignores conditional writes: a PutObject with "
            f"{' and '.join(ignored)} was applied although its condition was false. Loupe cannot own drafts or "
            "publish safely there (two builds could both publish and one would be lost silently), and it has no "
            "fallback for such stores. Use a store that enforces S3 conditional writes (AWS S3, MinIO, recent "
            "Ceph RGW), or check that no proxy in front of the store drops If-Match / If-None-Match.", url=url)
    with _checked_lock:
        _checked.add(key)


def _applied(store: ObjectStore, bucket: str, key: str, condition: dict) -> bool:
    try:
        store.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"must not be written\n", **condition)
    except Exception as exc:
        if condition_refused(exc):
            return False
        code = s3_error_code(exc)
        raise StorageError(f"cannot probe conditional writes at {store.location.url}: the store answered "
                           f"{code or type(exc).__name__} ({exc}); Loupe needs S3 conditional writes "
                           "(If-Match / If-None-Match on PutObject)", url=store.location.url) from exc
    return True
