"""Whole-object I/O on an atlas root: put, get, list, copy, delete, with errors naming the object.

Every write in an atlas goes through `ObjectStore.put`, which returns the object's checksum entry,
so callers can record exactly what they wrote. Local writes land through a temporary file and an
atomic rename, so a killed writer never leaves a torn object behind under its final name.
"""

from __future__ import annotations

import errno
import glob
import os
import tempfile
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

from loupe.storage import checksums, layout
from loupe.storage.errors import StorageError
from loupe.storage.urls import Location


#: Serialises conditional writes on stores with no atomic primitive (memory:// in tests).
_PROCESS_LOCK = threading.Lock()


class ConditionFailedError(StorageError):
    """A conditional write found the object already present, or changed since it was read."""


@dataclass(frozen=True)
class Tagged:
    """An object's bytes with the tag a conditional write must name to replace exactly this content
    (the S3 ETag; locally the SHA-256 of the bytes)."""

    data: bytes
    tag: str


def s3_error_code(exc: BaseException) -> str:
    """The S3 error code (e.g. PreconditionFailed) behind an s3fs/botocore exception, or ''."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            return response.get("Error", {}).get("Code", "")
    return ""


def condition_refused(exc: BaseException) -> bool:
    """Whether a conditional PutObject failed because its If-Match / If-None-Match did not hold."""
    return s3_error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict") or isinstance(exc, FileExistsError)


def describe_failure(exc: BaseException) -> str:
    """A short reason for a filesystem failure, recognising the common S3 cases."""
    text = str(exc) or type(exc).__name__
    code = ""
    cause = exc.__cause__ or exc.__context__
    response = getattr(exc, "response", None) or getattr(cause, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code", "")
    if isinstance(exc, PermissionError) or code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"):
        return f"permission denied ({code or text})"
    if code == "NoSuchBucket" or "bucket does not exist" in text.lower():
        return "the bucket does not exist"
    return f"{type(exc).__name__}: {text}"


class ObjectStore:
    """Byte-level access to the objects under one atlas root."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.fs = location.fs

    def _fail(self, action: str, rel: str, exc: BaseException) -> StorageError:
        url = self.location.url_of(rel)
        return StorageError(f"cannot {action} {url}: {describe_failure(exc)}", url=url)

    def put(self, rel: str, data: bytes) -> dict:
        """Write one object (overwriting with the same bytes is harmless) and return its checksum entry."""
        path = self.location.path(rel)
        try:
            if self.location.is_local:
                _atomic_local_write(path, data)
            else:
                self.fs.pipe_file(path, data)
        except Exception as exc:
            raise self._fail("write", rel, exc) from exc
        return checksums.entry(data)

    def get(self, rel: str, expected: dict | str | None = None) -> bytes:
        """Read one whole object; with `expected`, verify its SHA-256 and name the object if it differs."""
        try:
            data = self.fs.cat_file(self.location.path(rel))
        except FileNotFoundError as exc:
            url = self.location.url_of(rel)
            raise StorageError(f"missing object {url}", url=url) from exc
        except Exception as exc:
            raise self._fail("read", rel, exc) from exc
        if expected is not None:
            checksums.verify(data, expected, self.location.url_of(rel))
        return data

    def get_optional(self, rel: str) -> bytes | None:
        try:
            return self.get(rel)
        except StorageError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                return None
            raise

    def get_many(self, rels: list[str]) -> dict[str, bytes]:
        """Read many small objects concurrently (one request each, batched by fsspec); a missing
        one is an error naming it."""
        got = self.get_many_optional(rels)
        missing = [rel for rel, value in got.items() if value is None]
        if missing:
            url = self.location.url_of(missing[0])
            raise StorageError(f"missing object {url}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                               url=url)
        return got

    def get_many_optional(self, rels: list[str]) -> dict[str, bytes | None]:
        """Read many small objects concurrently; a missing one reads as None (one request each)."""
        if not rels:
            return {}
        paths = [self.location.path(r) for r in rels]
        try:
            got = self.fs.cat(paths, on_error="return")
        except Exception as exc:
            raise self._fail("read objects under", "", exc) from exc
        if len(paths) == 1 and not isinstance(got, dict):
            got = {paths[0]: got}
        by_path = {self.fs._strip_protocol(p): v for p, v in got.items()}
        out: dict[str, bytes | None] = {}
        for rel, path in zip(rels, paths):
            value = by_path[self.fs._strip_protocol(path)]
            if isinstance(value, FileNotFoundError):
                value = None
            elif isinstance(value, BaseException):
                raise self._fail("read", rel, value) from value
            out[rel] = value
        return out

    def put_many(self, objects: Mapping[str, bytes]) -> None:
        """Write many small objects, concurrently on object stores (one request each)."""
        if not objects:
            return
        if self.location.is_local:
            for rel, data in objects.items():
                self.put(rel, data)
            return
        try:
            self.fs.pipe({self.location.path(rel): data for rel, data in objects.items()})
        except Exception as exc:
            raise self._fail("write objects under", "", exc) from exc

    def exists(self, rel: str) -> bool:
        try:
            return self.fs.exists(self.location.path(rel))
        except Exception as exc:
            raise self._fail("check", rel, exc) from exc

    def list_files(self, rel_dir: str) -> dict[str, int]:
        """All objects below a directory, as {path relative to the root: size}; empty if none."""
        base = self.location.path(rel_dir)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as exc:
            raise self._fail("list", rel_dir, exc) from exc
        root = self.fs._strip_protocol(self.location.root).rstrip("/") + "/"
        out = {}
        for path, info in found.items():
            path = self.fs._strip_protocol(path)
            if info.get("type", "file") == "file" and path.startswith(root):
                out[path[len(root):]] = int(info.get("size") or 0)
        return out

    def list_dirs(self, rel_dir: str) -> list[str]:
        """Names of the immediate sub-directories of a directory (one LIST)."""
        try:
            entries = self.fs.ls(self.location.path(rel_dir), detail=True, refresh=True) if not self.location.is_local \
                else self.fs.ls(self.location.path(rel_dir), detail=True)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._fail("list", rel_dir, exc) from exc
        return sorted(os.path.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "directory")

    def copy_many(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Copy objects within the root; server-side on S3 (no bytes pass through this process)."""
        pairs = list(pairs)
        if not pairs:
            return
        if self.location.is_local:
            for src, dst in pairs:
                try:
                    with open(self.location.path(src), "rb") as handle:
                        _atomic_local_write(self.location.path(dst), handle.read())
                except FileNotFoundError as exc:
                    url = self.location.url_of(src)
                    raise StorageError(f"missing object {url}", url=url) from exc
            return
        try:
            self.fs.copy([self.location.path(s) for s, _ in pairs], [self.location.path(d) for _, d in pairs])
        except FileNotFoundError as exc:
            raise StorageError(f"missing object while copying under {self.location.url}: {exc}", url=self.location.url) from exc
        except Exception as exc:
            raise self._fail("copy objects under", "", exc) from exc

    # ---- conditional writes: the only primitives that decide ownership and publication -------
    def get_tagged(self, rel: str) -> Tagged | None:
        """Read one whole object with its tag, or None if it does not exist."""
        if not self.location.is_s3:
            data = self.get_optional(rel)
            return None if data is None else Tagged(data, checksums.sha256(data))
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(self.location.path(rel))

        async def get() -> Tagged | None:
            try:
                response = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            except FileNotFoundError:
                return None
            try:
                return Tagged(await response["Body"].read(), response["ETag"])
            finally:
                response["Body"].close()

        try:
            return sync(self.fs.loop, get)
        except Exception as exc:
            raise self._fail("read", rel, exc) from exc

    def put_conditional(self, rel: str, data: bytes, *, expected_tag: str | None) -> str:
        """Write `data` only if the object is absent (expected_tag None) or still has `expected_tag`.

        Returns the new tag. Raises ConditionFailedError when the condition does not hold. A write
        whose answer was lost (a 5xx, then a retry that meets its own write) is settled by reading
        the object back: our own bytes there mean the write happened.
        """
        if self.location.is_s3:
            return self._put_conditional_s3(rel, data, expected_tag)
        with self.exclusive():
            current = self.get_tagged(rel)
            if (current.tag if current else None) != expected_tag:
                raise self._condition_failed(rel, expected_tag)
            if not self.location.is_local:
                self.put(rel, data)
                return checksums.sha256(data)
            try:
                _atomic_local_write(self.location.path(rel), data, durable=True)
            except Exception as exc:
                raise self._fail("write", rel, exc) from exc
        return checksums.sha256(data)

    def _condition_failed(self, rel: str, expected_tag: str | None) -> ConditionFailedError:
        url = self.location.url_of(rel)
        state = "already exists" if expected_tag is None else "changed since it was read"
        return ConditionFailedError(f"conditional write of {url} refused: the object {state}", url=url)

    def _put_conditional_s3(self, rel: str, data: bytes, expected_tag: str | None) -> str:
        bucket, key, _ = self.fs.split_path(self.location.path(rel))
        condition = {"IfMatch": expected_tag} if expected_tag else {"IfNoneMatch": "*"}
        try:
            response = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data,
                                       ContentType="application/json", **condition)
            return response["ETag"]
        except Exception as exc:
            try:
                landed = self.get_tagged(rel)
            except StorageError:
                landed = None
            if landed is not None and landed.data == data:
                return landed.tag
            code = s3_error_code(exc)
            if condition_refused(exc):
                raise self._condition_failed(rel, expected_tag) from exc
            if expected_tag and code != "NoSuchBucket" and (code == "NoSuchKey" or isinstance(exc, FileNotFoundError)):
                raise self._condition_failed(rel, expected_tag) from exc  # If-Match on an object now gone
            if code in ("NotImplemented", "InvalidArgument"):
                url = self.location.url_of(rel)
                raise StorageError(
                    f"cannot write {url}: the store rejected a conditional write ({code}); Loupe needs S3 "
                    "conditional writes (If-Match / If-None-Match on PutObject) to own drafts and publish safely",
                    url=url) from exc
            raise self._fail("write", rel, exc) from exc
        finally:
            self.fs.invalidate_cache(self.location.path(rel))

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the atlas-wide write lock of a store without conditional writes.

        Locally an flock on ROOT/.atlas.lock (the kernel drops it if the process dies, so there are
        no stale locks); other non-S3 protocols get a process-wide lock, safe only in one process.
        """
        if self.location.is_local:
            import fcntl

            os.makedirs(self.location.root, exist_ok=True)
            with open(os.path.join(self.location.root, layout.LOCK), "a+b") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return
        warnings.warn(f"{self.location.url}: no atomic conditional write for protocol {self.location.protocol!r}; "
                      "publishing and draft ownership are only safe within this process", stacklevel=3)
        with _PROCESS_LOCK:
            yield

    def delete_tree(self, rel_dir: str) -> None:
        try:
            if self.fs.exists(self.location.path(rel_dir)):
                self.fs.rm(self.location.path(rel_dir), recursive=True)
        except Exception as exc:
            raise self._fail("delete", rel_dir, exc) from exc

    def delete(self, rel: str) -> None:
        try:
            self.fs.rm_file(self.location.path(rel))
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._fail("delete", rel, exc) from exc


def _atomic_local_write(path: str, data: bytes, durable: bool = False) -> None:
    """Write through a temporary file and rename it into place; the temporary file never survives
    a failure. `durable` (only for writes made under the atlas lock) also fsyncs the directory and
    first removes temporary files that killed lock holders left behind for this same object."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    name = os.path.basename(path)
    if durable:
        # Only lock holders create these names, and the caller holds the lock: any found are litter.
        for stale in glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}.*.tmp")) + \
                glob.glob(os.path.join(glob.escape(directory), f"{glob.escape(name)}.*.tmp")):
            os.unlink(stale)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}." if durable else ".tmp-",
                               suffix=".tmp" if durable else ".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        if durable:
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
        raise
