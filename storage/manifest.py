"""Version manifests: what a complete version holds, built from its completion records at publish.

The manifest is small (config, digests, counts, per-layer index, array metadata, table checksums);
the full per-object checksum list lives beside it in checksums.json, whose SHA-256 the manifest
records, and the manifest's own SHA-256 is recorded in the pointer. So one verified chain runs
from atlas.json down to every stored byte.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable

from loupe.storage import layout
from loupe.storage.checksums import canonical_json, sha256
from loupe.storage.completion import ItemRecord
from loupe.storage.errors import StorageError
from loupe.storage.status import VersionStatus


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def config_digest(config: Any) -> str:
    return sha256(canonical_json(config))


def to_ranges(values: Iterable[int]) -> list[list[int]]:
    """[1,2,3,7] -> [[1,4],[7,8]] (half-open ranges), a compact form for unit and image sets."""
    out: list[list[int]] = []
    for v in sorted(set(values)):
        if out and out[-1][1] == v:
            out[-1][1] = v + 1
        else:
            out.append([v, v + 1])
    return out


def merge_ranges(ranges: Iterable[Iterable[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for start, stop in sorted((int(a), int(b)) for a, b in ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], stop)
        else:
            out.append([start, stop])
    return out


def range_count(ranges: list[list[int]]) -> int:
    return sum(b - a for a, b in ranges)


def build(draft: dict, records: list[ItemRecord], array_entries: dict[str, tuple[dict, dict]],
          extra_objects: dict[str, dict]) -> tuple[dict, dict]:
    """Return (manifest, checksums) for a version.

    array_entries maps an array path to (checksum entry of its zarr.json, parsed metadata).
    """
    records = sorted(records, key=lambda r: r.key)
    objects = _objects_with_one_writer(records)
    layers, images_tables = _index_covers(records)
    arrays_out = {}
    for path, (entry, meta) in sorted(array_entries.items()):
        objects[f"{path}/zarr.json"] = entry
        arrays_out[path] = {**entry, "metadata": meta}
    objects.update(extra_objects)
    n_units, render_units = _summarize_layers(layers, arrays_out)
    checksums = dict(sorted(objects.items()))
    manifest = {
        "format": layout.FORMAT,
        "version": draft["version"],
        "status": VersionStatus.COMPLETE.value,
        "created_at": draft.get("created_at"),
        "sealed_at": utc_now(),
        "base_version": draft.get("base_version"),
        "config": draft.get("config"),
        "config_sha256": draft.get("config_sha256"),
        "models": draft.get("models") or {},
        "code_version": draft.get("code_version"),
        "counts": {
            "items": len(records),
            "objects": len(checksums),
            "bytes": sum(e["size"] for e in checksums.values()),
            "models": len(layers),
            "layers": sum(len(v) for v in layers.values()),
            "units": n_units,
            "renders": render_units,
            "images": sum(t["rows"] for t in images_tables.values()),
        },
        "layers": layers,
        "images_tables": images_tables,
        "arrays": arrays_out,
    }
    return manifest, checksums


def _objects_with_one_writer(records: list[ItemRecord]) -> dict[str, dict]:
    """Every object the items wrote; two items writing one object with different bytes is an error."""
    objects: dict[str, dict] = {}
    owners: dict[str, str] = {}
    for record in records:
        for path, entry in record.objects.items():
            if path in objects and objects[path]["sha256"] != entry["sha256"]:
                raise StorageError(
                    f"work items {owners[path]} and {record.key} both wrote {path} with different bytes; "
                    "each shard or file must have exactly one writer"
                )
            objects[path] = entry
            owners[path] = record.key
    return objects


def _index_covers(records: list[ItemRecord]) -> tuple[dict[str, dict[str, dict]], dict[str, dict]]:
    """Per model and layer: which render units, activation images and table files the items cover."""
    layers: dict[str, dict[str, dict]] = {}
    images_tables: dict[str, dict] = {}

    def layer_entry(cover: dict) -> dict:
        return layers.setdefault(cover["model"], {}).setdefault(
            cover["layer"], {"renders": {}, "activations": {}, "tables": {}, "examples": {}})

    for record in records:
        for cover in record.covers:
            kind = cover["type"]
            if kind == "renders":
                entry = layer_entry(cover)["renders"].setdefault(
                    cover["kind"], {"array": cover["array"], "objective": cover["objective"], "units": []})
                entry["units"].append(cover["units"])
            elif kind == "activations":
                entry = layer_entry(cover)["activations"].setdefault(
                    cover["pooling"], {"array": cover["array"], "images": []})
                entry["images"].append(cover["images"])
            elif kind == "examples":
                entry = layer_entry(cover)["examples"].setdefault(
                    cover["kind"], {"pictures": cover["pictures"], "heatmaps": cover["heatmaps"], "units": []})
                entry["units"].append(cover["units"])
            elif kind == "table" and cover["table"] == "images":
                images_tables[cover["path"]] = {**record.objects[cover["path"]], "rows": cover["rows"]}
            elif kind == "table":
                files = layer_entry(cover)["tables"].setdefault(cover["table"], {})
                files[cover["path"]] = {**record.objects[cover["path"]], "rows": cover["rows"], "units": cover["units"]}
    return layers, images_tables


def _summarize_layers(layers: dict[str, dict[str, dict]], arrays_out: dict[str, dict]) -> tuple[int, dict[str, int]]:
    """Merge each layer's ranges in place, attach array shapes; returns (units, renders per kind)."""
    n_units_total = 0
    render_units: dict[str, int] = {}
    for by_layer in layers.values():
        for entry in by_layer.values():
            units: list[list[int]] = []
            for kind, render in entry["renders"].items():
                render["units"] = merge_ranges(render["units"])
                render["shape"] = arrays_out.get(render["array"], {}).get("metadata", {}).get("shape")
                units += render["units"]
                render_units[kind] = render_units.get(kind, 0) + range_count(render["units"])
            for pictures in entry["examples"].values():
                pictures["units"] = merge_ranges(pictures["units"])
                pictures["shape"] = arrays_out.get(pictures["pictures"], {}).get("metadata", {}).get("shape")
            for pooled in entry["activations"].values():
                pooled["images"] = merge_ranges(pooled["images"])
                pooled["shape"] = arrays_out.get(pooled["array"], {}).get("metadata", {}).get("shape")
            for files in entry["tables"].values():
                for info in files.values():
                    units += info["units"]
            entry["units"] = merge_ranges(units)
            n_units_total += range_count(entry["units"])
    return n_units_total, render_units


def parse(data: bytes, where: str) -> dict:
    """A manifest read back from storage, with every path it names checked to stay inside the version."""
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise StorageError(f"unreadable manifest {where}: {exc}", url=where) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != layout.FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise StorageError(f"{where} is not a Loupe atlas manifest (format {found!r})", url=where)
    try:
        for path in _named_paths(manifest):
            layout.check_relative_path(path, f"manifest {where}")
    except (KeyError, TypeError, AttributeError) as exc:
        raise StorageError(f"malformed manifest {where}: {type(exc).__name__}: {exc}", url=where) from exc
    return manifest


def _named_paths(manifest: dict) -> Iterable[object]:
    """Every object path a manifest names: arrays, render and activation arrays, tables, checksums."""
    yield manifest["checksums"]["path"]
    yield from manifest.get("arrays", {})
    yield from manifest.get("images_tables", {})
    for by_layer in manifest.get("layers", {}).values():
        for entry in by_layer.values():
            for render in entry.get("renders", {}).values():
                yield render["array"]
                yield render["objective"]
            for pooled in entry.get("activations", {}).values():
                yield pooled["array"]
            for pictures in entry.get("examples", {}).values():
                yield pictures["pictures"]
                yield pictures["heatmaps"]
            for files in entry.get("tables", {}).values():
                yield from files


def parse_checksums(data: bytes, where: str) -> dict[str, dict]:
    """checksums.json read back from storage: {path: {sha256, size}}, every path checked."""
    try:
        sums = json.loads(data)
    except ValueError as exc:
        raise StorageError(f"unreadable checksum list {where}: {exc}", url=where) from exc
    if not isinstance(sums, dict):
        raise StorageError(f"checksum list {where} is not a mapping", url=where)
    for path, entry in sums.items():
        layout.check_relative_path(path, f"checksum list {where}")
        if not isinstance(entry, dict) or "sha256" not in entry:
            raise StorageError(f"checksum list {where}: entry for {path!r} has no sha256", url=where)
    return sums
