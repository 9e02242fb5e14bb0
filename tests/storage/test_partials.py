"""Partials are read back verified, and each item's record is read once per writer, not per partial."""

from __future__ import annotations

import pytest

from loupe.storage import AtlasWriter, ChecksumError, StorageError
from loupe.storage import layout


def test_partials_of_one_item_cost_one_record_read(tmp_path, monkeypatch):
    writer = AtlasWriter.create(str(tmp_path / "atlas"))
    with writer.item("scan-a") as item:
        for i in range(5):
            item.write_partial(f"layer-{i}.npz", bytes([i]) * 100)
    reads: list[str] = []
    original = writer.store.get_optional
    monkeypatch.setattr(writer.store, "get_optional", lambda rel: reads.append(rel) or original(rel))
    assert [writer.read_partial("scan-a", f"layer-{i}.npz") for i in range(5)] == [bytes([i]) * 100 for i in range(5)]
    assert reads == [layout.item_record(writer.version, "scan-a")]
    with pytest.raises(StorageError, match="no completed partial 'layer-9.npz'"):
        writer.read_partial("scan-a", "layer-9.npz")
    path = tmp_path / "atlas" / layout.version_dir(writer.version) / layout.partial("scan-a", "layer-2.npz")
    path.write_bytes(b"planted")
    with pytest.raises(ChecksumError):
        writer.read_partial("scan-a", "layer-2.npz")
