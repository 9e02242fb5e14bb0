"""Turn an atlas URL plus storage_options into an fsspec filesystem with sane S3 settings.

A plain path or file:// URL is a local folder (the embedded default); s3:// goes through s3fs,
and any other fsspec protocol is accepted as long as fsspec knows it. Credentials and endpoints
come from storage_options when given, otherwise from the usual AWS environment, profiles and
instance metadata (botocore's default chain).
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import fsspec
from fsspec.implementations.local import LocalFileSystem

from loupe.storage.errors import StorageError

#: botocore settings merged under the user's config_kwargs. "when_required" stops botocore from
#: adding CRC trailers/validation that several S3-compatible stores (older MinIO, Ceph RGW, R2)
#: reject; "standard" retries back off exponentially on throttling and 5xx responses.
S3_CONFIG_DEFAULTS: dict[str, Any] = {
    "retries": {"max_attempts": 8, "mode": "standard"},
    "request_checksum_calculation": "when_required",
    "response_checksum_validation": "when_required",
    "connect_timeout": 10,
    "read_timeout": 60,
}

#: s3fs settings (s3fs also retries SlowDown and transient errors itself, 5 times): no HEAD before
#: every whole-object GET (max_concurrency=1 skips the size probe; our objects are small), and no
#: listing cache, since other workers add objects while a build runs.
S3FS_DEFAULTS: dict[str, Any] = {"max_concurrency": 1, "use_listings_cache": False}


@dataclass(frozen=True)
class Location:
    """A resolved atlas root: the URL as given, its protocol, filesystem and root path."""

    url: str
    protocol: str
    root: str
    options: dict = field(repr=False)
    fs: fsspec.AbstractFileSystem = field(repr=False)

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def is_s3(self) -> bool:
        return self.protocol == "s3"

    def path(self, rel: str) -> str:
        """Filesystem path of an object relative to the root."""
        return f"{self.root.rstrip('/')}/{rel}" if rel else self.root

    def url_of(self, rel: str) -> str:
        """Human-readable URL of an object, used in error messages."""
        return f"{self.url.rstrip('/')}/{rel}" if rel else self.url


def _protocol(url: str) -> str:
    if "://" not in url:
        return "file"
    scheme = url.split("://", 1)[0].lower()
    return "s3" if scheme in ("s3", "s3a") else scheme


def merge_options(defaults: Mapping[str, Any], user: Mapping[str, Any]) -> dict:
    out = copy.deepcopy(dict(defaults))
    for key, value in user.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_options(out[key], value)
        else:
            out[key] = value
    return out


def s3_options(storage_options: Mapping[str, Any] | None = None) -> dict:
    """s3fs options with Loupe's retry and checksum defaults under the user's own settings."""
    user = dict(storage_options or {})
    opts = merge_options(S3FS_DEFAULTS, {k: v for k, v in user.items() if k != "config_kwargs"})
    opts["config_kwargs"] = merge_options(S3_CONFIG_DEFAULTS, user.get("config_kwargs") or {})
    return opts


def resolve(url: str, storage_options: Mapping[str, Any] | None = None, *, asynchronous: bool = False) -> Location:
    """Resolve an atlas URL; raises StorageError naming the URL when it cannot be used at all."""
    if not isinstance(url, str) or not url.strip():
        raise StorageError(f"atlas URL must be a non-empty string, got {url!r}", url=str(url))
    url = url.strip()
    if "://" not in url and re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", url):
        raise StorageError(f"atlas URL {url!r} looks like a URL with a malformed scheme (expected e.g. s3://bucket/prefix)", url=url)
    protocol = _protocol(url)
    if protocol == "file":
        local = url[len("file://"):] if url.startswith("file://") else url
        root = os.path.abspath(os.path.expanduser(local))
        return Location(url=url, protocol="file", root=root, options={}, fs=LocalFileSystem())
    try:
        fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as exc:
        raise StorageError(f"atlas URL {url!r}: unsupported storage protocol {protocol!r} ({exc})", url=url) from exc
    if protocol == "s3":
        opts = s3_options(storage_options)
        bucket = url.split("://", 1)[1].split("/", 1)[0]
        if not bucket:
            raise StorageError(f"atlas URL {url!r} names no bucket (expected s3://bucket/prefix)", url=url)
    else:
        opts = dict(storage_options or {})
    if asynchronous:
        opts["asynchronous"] = True
    try:
        fs, root = fsspec.url_to_fs(url, **opts)
    except Exception as exc:  # bad option names or values surface here
        raise StorageError(f"cannot open atlas URL {url!r}: {exc}", url=url) from exc
    return Location(url=url, protocol=protocol, root=root.rstrip("/"), options=opts, fs=fs)
