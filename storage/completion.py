"""Completion records: one small JSON object per finished work item, written after its data.

A record lists every object the item wrote with its checksum, plus what the item covered (model,
layer, kind, unit or image ranges). Its presence means "done"; its contents let publish build the
manifest and let a later version reuse the item by copying exactly those objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from loupe.storage.checksums import canonical_json
from loupe.storage.errors import StorageError


@dataclass
class ItemRecord:
    key: str
    objects: dict[str, dict] = field(default_factory=dict)  # path in version -> {"sha256", "size"}
    covers: list[dict] = field(default_factory=list)  # what was written: renders, activations, tables
    arrays: dict[str, dict] = field(default_factory=dict)  # array path -> layout fingerprint
    meta: dict = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return canonical_json({
            "key": self.key,
            "objects": self.objects,
            "covers": sorted(self.covers, key=lambda c: canonical_json(c)),
            "arrays": self.arrays,
            "meta": self.meta,
        })

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> "ItemRecord":
        try:
            raw = json.loads(data)
            return cls(key=raw["key"], objects=raw["objects"], covers=raw["covers"], arrays=raw.get("arrays", {}),
                       meta=raw.get("meta", {}))
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"unreadable completion record {where}: {exc}", url=where) from exc
