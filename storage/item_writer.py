"""Writing one work item: its data objects first, its completion record last.

A record's presence means the item is fully written; it lists every object the item wrote with
its checksum and what the item covers, so publish can build the manifest from records alone.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pyarrow as pa

from loupe.storage import activations, arrays, examples, layout, manifest, renders, tables
from loupe.storage.checksums import canonical_json
from loupe.storage.completion import ItemRecord
from loupe.storage.errors import StorageError

if TYPE_CHECKING:
    from loupe.storage.writer import AtlasWriter


class ItemWriter:
    """Writes one work item's objects, then its completion record (on commit or clean exit)."""

    def __init__(self, writer: "AtlasWriter", key: str, meta: dict) -> None:
        self.writer = writer
        self.key = key
        self.record = ItemRecord(key=key, meta=json.loads(canonical_json(meta)))
        self._committed = False

    def __enter__(self) -> "ItemWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._committed:
            self.commit()

    def _put(self, path: str, data: bytes) -> None:
        """Upload one object; a second write of the same object in one item is refused, since the
        later bytes would silently replace what the record says the first write covered."""
        if path in self.record.objects:
            raise StorageError(
                f"work item {self.key} wrote {path} twice; an item must encode each object once from all its data"
            )
        self.record.objects[path] = self.writer.store.put(self.writer._rel(path), data)

    def _track_array(self, path: str, meta: bytes) -> None:
        self.record.arrays[path] = json.loads(canonical_json(arrays.layout_fingerprint(json.loads(meta))))

    def write_render_block(self, model: str, layer: str, kind: str, unit_start: int, images: np.ndarray,
                           objective: np.ndarray | Sequence[float]) -> None:
        """Write renders of the consecutive units unit_start.. (see write_renders)."""
        count = images.shape[0] if isinstance(images, np.ndarray) and images.ndim else 0
        self.write_renders(model, layer, kind, range(int(unit_start), int(unit_start) + count), images, objective)

    def write_renders(self, model: str, layer: str, kind: str, units: Sequence[int], images: np.ndarray,
                      objective: np.ndarray | Sequence[float]) -> None:
        """Write renders of `units` (strictly increasing, inside one shard; uint8 [n, H, W, 3], or
        [n, S, H, W, 3] with samples) and their final objective values ([n] or [n, S]).

        The shard and the objective chunk are each encoded once from all the units, so a sparse
        set such as [3, 4, 6] lands in one object; units not listed stay absent and uncovered.
        """
        where = f"work item {self.key}: renders of {model}/{layer}/{kind}"
        images_path = layout.render_array(model, layer, kind)
        objective_path = layout.objective_array(model, layer, kind)
        images_meta = self.writer.array_metadata(images_path)
        objective_meta = self.writer.array_metadata(objective_path)
        geometry = renders.geometry_from_metadata(json.loads(images_meta))
        unit_ids = np.asarray(list(units), dtype=np.int64)
        objective = np.asarray(objective, dtype=np.float32)
        renders.check_units(geometry, unit_ids, images, objective, where)
        image_objs, objective_objs = renders.encode_units(images_meta, objective_meta, unit_ids, images, objective)
        for key, data in image_objs.items():
            self._put(f"{images_path}/{key}", data)
        for key, data in objective_objs.items():
            self._put(f"{objective_path}/{key}", data)
        self._track_array(images_path, images_meta)
        self._track_array(objective_path, objective_meta)
        for start, stop in manifest.to_ranges(unit_ids.tolist()):
            self.record.covers.append({"type": "renders", "model": model, "layer": layer, "kind": kind,
                                       "array": images_path, "objective": objective_path, "units": [start, stop]})

    def write_activations(self, model: str, layer: str, image_start: int, **pooled: np.ndarray) -> None:
        """Write a scan shard's pooled activations, e.g. max=[n, C], mean=[n, C], for images
        image_start..; the range must be aligned to the array's chunks (see plan_image_chunks)."""
        if not pooled:
            raise StorageError(f"work item {self.key}: write_activations for {model}/{layer} got no arrays")
        for pooling, values in pooled.items():
            where = f"work item {self.key}: {pooling} activations of {model}/{layer}"
            path = layout.activation_array(model, layer, pooling)
            meta_bytes = self.writer.array_metadata(path)
            meta = json.loads(meta_bytes)
            values = np.asarray(values)
            activations.check_chunk(meta, int(image_start), values, where)
            for key, data in activations.encode_chunk(meta_bytes, meta["data_type"], int(image_start), values).items():
                self._put(f"{path}/{key}", data)
            self._track_array(path, meta_bytes)
            self.record.covers.append({"type": "activations", "model": model, "layer": layer, "pooling": pooling,
                                       "array": path, "images": [int(image_start), int(image_start) + len(values)]})

    def write_example_pictures(self, model: str, layer: str, kind: str, units: Sequence[int], pictures: np.ndarray,
                               heatmaps: np.ndarray) -> None:
        """Write example pictures (uint8 [n, slots, P, P, 3]) and heat maps (float16 [n, slots, H, H]) of
        `units` (strictly increasing; may span several shards): each shard object is encoded once from
        every unit of it given here, so give each shard's units in one call."""
        where = f"work item {self.key}: {kind} example pictures of {model}/{layer}"
        examples.check_kind(kind, where)
        paths = {what: layout.example_array(model, layer, kind, what) for what in examples.WHAT}
        metas = {what: self.writer.array_metadata(path) for what, path in paths.items()}
        geometry = examples.geometry_from_metadata(json.loads(metas["pictures"]), json.loads(metas["heatmaps"]))
        unit_ids = np.asarray(list(units), dtype=np.int64)
        examples.check_units(geometry, unit_ids, pictures, heatmaps, where)
        for what, values in (("pictures", pictures), ("heatmaps", heatmaps)):
            for key, data in arrays.encode_rows(metas[what], unit_ids, values).items():
                self._put(f"{paths[what]}/{key}", data)
            self._track_array(paths[what], metas[what])
        for start, stop in manifest.to_ranges(unit_ids.tolist()):
            self.record.covers.append({"type": "examples", "model": model, "layer": layer, "kind": kind,
                                       "pictures": paths["pictures"], "heatmaps": paths["heatmaps"],
                                       "units": [start, stop]})

    def _write_table(self, name: str, table: pa.Table, model: str | None, layer: str | None) -> None:
        where = f"work item {self.key}: {name} table" + (f" of {model}/{layer}" if model else "")
        table = tables.prepare(table, name, model, layer, where)
        path = layout.table_part(name, self.key, model, layer)
        self._put(path, tables.encode(table))
        cover = {"type": "table", "table": name, "path": path, "rows": table.num_rows}
        if model is not None:
            cover.update(model=model, layer=layer, units=manifest.to_ranges(tables.unit_range(table)))
        self.record.covers.append(cover)

    def write_units(self, model: str, layer: str, table: pa.Table) -> None:
        """Per-unit statistics (one row per unit; needs an integer 'unit' column)."""
        self._write_table(tables.UNITS, table, model, layer)

    def write_examples(self, model: str, layer: str, table: pa.Table) -> None:
        """Dataset example rows (unit, top/bottom, rank, image id, value, y, x, crop box ...)."""
        self._write_table(tables.EXAMPLES, table, model, layer)

    def write_samples(self, model: str, layer: str, table: pa.Table) -> None:
        """Quantile-band samples (unit, band, slot, image, value, band edges, crop boxes ...)."""
        self._write_table(tables.SAMPLES, table, model, layer)

    def write_histograms(self, model: str, layer: str, table: pa.Table) -> None:
        """Histograms of each unit's per-image max (unit, bin, lower, upper, count)."""
        self._write_table(tables.HISTOGRAMS, table, model, layer)

    def write_images(self, table: pa.Table) -> None:
        """Image id -> URI rows (needs 'image_id' and 'uri' columns)."""
        self._write_table(tables.IMAGES, table, None, None)

    def write_partial(self, name: str, data: bytes) -> None:
        """An intermediate result of this item (e.g. a scan shard's mergeable top-k) for a later reduce.

        Partials are checksummed and copied with the item on reuse like any other object, but
        readers never see them: they are build state, not atlas content.
        """
        self._put(layout.partial(self.key, name), bytes(data))
        self.record.covers.append({"type": "partial", "name": name})

    def commit(self) -> None:
        """Write the completion record; after this the item counts as done."""
        if self._committed:
            return
        self.writer.store.put(layout.item_record(self.writer.version, self.key), self.record.to_bytes())
        self._committed = True
