"""Per-object checksums: SHA-256 recorded at write time, verified when an object is read whole."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from loupe.storage.errors import ChecksumError


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(data: bytes) -> dict[str, Any]:
    """What the manifest records for one object."""
    return {"sha256": sha256(data), "size": len(data)}


def verify(data: bytes, expected: dict[str, Any] | str, where: str) -> bytes:
    """Return data if it matches the recorded checksum, else raise ChecksumError naming the object."""
    want = expected if isinstance(expected, str) else expected["sha256"]
    got = sha256(data)
    if got != want:
        raise ChecksumError(
            f"checksum mismatch in {where}: recorded sha256 {want[:16]}..., stored bytes hash to {got[:16]}... "
            "(the object was corrupted or modified after it was written)",
            url=where,
        )
    return data


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes, so rewriting the same record yields identical bytes."""
    return (json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
