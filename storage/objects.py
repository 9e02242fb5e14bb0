"""Whole-object I/O on an atlas root: put, get, list, copy, delete, with errors naming the object.

Every write in an atlas goes through `ObjectStore.put`, which returns the object's checksum entry,
so callers can record exactly what they wrote. Local writes land through a temporary file and an
atomic rename, so a killed writer never leaves a torn object behind under its final name.
"""

from __future__ import annotations

import errno
import os
import tempfile
from typing import Iterable

from loupe.storage import checksums
from loupe.storage.errors import StorageError
from loupe.storage.urls import Location


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
        """Read many small objects concurrently (one request each, batched by fsspec)."""
        if not rels:
            return {}
        paths = [self.location.path(r) for r in rels]
        try:
            got = self.fs.cat(paths, on_error="raise")
        except FileNotFoundError as exc:
            raise StorageError(f"missing object under {self.location.url}: {exc}", url=self.location.url) from exc
        except Exception as exc:
            raise self._fail("read objects under", "", exc) from exc
        if len(paths) == 1 and not isinstance(got, dict):
            got = {paths[0]: got}
        by_path = {self.fs._strip_protocol(p): v for p, v in got.items()}
        return {r: by_path[self.fs._strip_protocol(p)] for r, p in zip(rels, paths)}

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


def _atomic_local_write(path: str, data: bytes) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
        raise
