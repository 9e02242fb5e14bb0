"""Reading a published atlas: `open_atlas(url)` pins one version, so a reader never mixes versions.

Opening costs two requests (pointer, manifest). The manifest carries every array's metadata, so
a unit's render costs two ranged GETs (shard index, then the unit's chunk) and a layer's grid one
GET per shard. Whole objects (tables) are verified against their recorded SHA-256; chunk reads are
verified by the CRC32C that every stored chunk and shard index carries.

A read never mistakes missing or mis-served bytes for data: an object the version's checksum list
names but the store lacks raises `MissingObjectError` naming it (zarr alone would return fill
values), and a CRC failure of a ranged read re-reads the objects involved whole against their
SHA-256, to tell a store that serves byte ranges wrongly (`RangeReadError`) from an object that is
really corrupt (`ChecksumError`). `open_atlas(url, ranged_reads=False)` reads such a store anyway:
whole objects only, each checked against its SHA-256.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from loupe.storage import arrays, checksums, display, examples, layout, manifest as manifests, publish, renders, tables
from loupe.storage.errors import ChecksumError, StorageError, VersionNotFoundError
from loupe.storage.guarded_store import ManifestGuardedStore
from loupe.storage.objects import ObjectStore
from loupe.storage.urls import resolve


def open_atlas(url: str, version: str | None = None, storage_options: Mapping[str, Any] | None = None, *,
               ranged_reads: bool = True) -> "Atlas":
    """Open the published version of an atlas, or a given complete version.

    `ranged_reads=False` fetches every array object whole and checks its SHA-256 instead of
    reading byte ranges: slower, but correct behind a store or proxy that mis-serves ranges.
    """
    store = ObjectStore(resolve(url, storage_options))
    if version is None:
        pointer = publish.read_pointer(store)
        if pointer is None:
            raise VersionNotFoundError(f"atlas {url} has no published version (no {layout.POINTER})", url=url)
        version = pointer["version"]
        raw = store.get(layout.manifest(version), expected=pointer["manifest_sha256"])
    else:
        layout.check_version_id(version)
        raw = store.get_optional(layout.manifest(version))
        if raw is None:
            state = "is still being built (not complete)" if store.exists(layout.draft_info(version)) else "does not exist"
            raise VersionNotFoundError(f"version {version} of atlas {url} {state}", url=store.location.url_of(layout.version_dir(version)))
    return Atlas(store, version, manifests.parse(raw, store.location.url_of(layout.manifest(version))),
                 ranged_reads=ranged_reads)


class Atlas:
    """One complete version of an atlas, read-only."""

    def __init__(self, store: ObjectStore, version: str, manifest: dict, *, ranged_reads: bool = True) -> None:
        self.store = store
        self.version = version
        self.manifest = manifest
        self.ranged_reads = ranged_reads
        self._arrays: dict[str, zarr.Array] = {}
        self._tables: dict[str, pa.Table] = {}
        self._units_tables: dict[tuple[str, str], pa.Table] = {}

    def __repr__(self) -> str:
        return f"Atlas({self.store.location.url!r}, version={self.version!r})"

    @property
    def url(self) -> str:
        return self.store.location.url

    # ---- listing ----------------------------------------------------------------------
    def models(self) -> list[str]:
        return sorted(self.manifest["layers"])

    def layers(self, model: str) -> list[str]:
        """The model's layers (each once, whatever bases it was built in)."""
        return sorted({layout.split_layer_key(key)[0] for key in self._model(model)})

    def layer_keys(self, model: str) -> list[str]:
        """Every (layer, basis) of the model as its layer key: `layer` (channels) or `layer@basis`."""
        return sorted(self._model(model))

    def bases(self, model: str, layer: str) -> list[str]:
        """The bases `layer` was built in: "channels" (when built) first, then file bases by name."""
        found = [basis for key in self._model(model) for name, basis in [layout.split_layer_key(key)] if name == layer]
        if not found:
            raise StorageError(f"atlas {self.url} version {self.version} has no layer {layer!r} in model {model!r}; "
                               f"layers: {self.layers(model)}")
        return sorted(found, key=lambda b: (b != layout.CHANNELS, b))

    def basis(self, model: str, layer: str, basis: str = layout.CHANNELS) -> "BasisInfo":
        """What the atlas records about one basis of a layer (its file, kind, size and digest)."""
        key = layout.layer_key(layer, basis)
        entry = self._layer(model, key)
        if basis == layout.CHANNELS:
            units = entry.get("units", [])
            return BasisInfo(model, layer, basis, "channels", range_count_of(units), None, None, None, None)
        record = (self.manifest.get("models", {}).get(model, {}).get("bases") or {}).get(key)
        if record is None:
            raise StorageError(f"atlas {self.url} version {self.version} has layer key {key!r} but no record of its "
                               "basis in the manifest's models")
        return BasisInfo(model, layer, basis, record["kind"], int(record["units"]), record.get("activation"),
                         record.get("k"), record.get("source"), record.get("sha256"))

    def kinds(self, model: str, layer: str, *, basis: str = layout.CHANNELS) -> list[str]:
        layer = layout.layer_key(layer, basis)
        return sorted(self._layer(model, layer)["renders"])

    def units(self, model: str, layer: str, *, basis: str = layout.CHANNELS) -> list[int]:
        """Units with a render or statistics in this version."""
        layer = layout.layer_key(layer, basis)
        return [u for start, stop in self._layer(model, layer)["units"] for u in range(start, stop)]

    def _model(self, model: str) -> dict:
        try:
            return self.manifest["layers"][model]
        except KeyError:
            raise StorageError(f"atlas {self.url} version {self.version} has no model {model!r}; models: {self.models()}") from None

    def _layer(self, model: str, layer: str) -> dict:
        by_layer = self._model(model)
        if layer not in by_layer:
            raise StorageError(f"atlas {self.url} version {self.version} has no layer {layer!r} in model {model!r}; "
                               f"layers: {sorted(by_layer)}")
        return by_layer[layer]

    def _render_entry(self, model: str, layer: str, kind: str) -> dict:
        entry = self._layer(model, layer)["renders"].get(kind)
        if entry is None:
            raise StorageError(f"atlas {self.url}: no {kind!r} renders for {model}/{layer}; kinds: {self.kinds(model, layer)}")
        return entry

    # ---- arrays -------------------------------------------------------------------------
    @cached_property
    def _zarr_store(self) -> ManifestGuardedStore:
        location = self.store.location
        root = location.url_of(layout.version_dir(self.version))
        if location.is_local:
            base = zarr.storage.LocalStore(location.path(layout.version_dir(self.version)), read_only=True)
        else:
            base = zarr.storage.FsspecStore.from_url(root, storage_options=dict(location.options), read_only=True)
        return ManifestGuardedStore(base, lambda key: key in self._checksums, self._object_url,
                                    ranged_reads=self.ranged_reads, verify=self._verify_object)

    def _verify_object(self, key: str, data: bytes) -> None:
        """Check a whole array object against the version's checksum list (if it lists the object)."""
        entry = self._checksums.get(key)
        if entry is not None:
            checksums.verify(data, entry, self._object_url(key))

    @cached_property
    def _checksums(self) -> dict[str, dict]:
        """{path in version: {sha256, size}} for every object (one GET, verified, read on demand)."""
        info = self.manifest["checksums"]
        rel = f"{layout.version_dir(self.version)}/{info['path']}"
        return manifests.parse_checksums(self.store.get(rel, expected=info), self.store.location.url_of(rel))

    def array(self, path: str) -> zarr.Array:
        """A stored Zarr array of this version by its path in the version (e.g. 'renders/m/l/channel.zarr')."""
        if path not in self._arrays:
            entry = self.manifest["arrays"].get(path)
            if entry is None:
                raise StorageError(f"atlas {self.url} version {self.version} has no array {path!r}")
            self._arrays[path] = arrays.open_from_metadata(self._zarr_store, path, entry["metadata"])
        return self._arrays[path]

    def _object_url(self, path: str) -> str:
        return self.store.location.url_of(f"{layout.version_dir(self.version)}/{path}")

    def _read(self, array: zarr.Array, path: str, selection: Any, object_key: str | None) -> np.ndarray:
        self._zarr_store.start_tracking()
        try:
            return array[selection]
        except StorageError:
            raise
        except Exception as exc:
            url = self._object_url(f"{path}/{object_key}" if object_key else path)
            text = str(exc)
            if "checksum" in text.lower() or "crc" in text.lower():
                raise self._diagnose_checksum_failure(self._zarr_store.touched(), url, text) from exc
            raise StorageError(f"cannot read {url}: {type(exc).__name__}: {text}", url=url) from exc

    def _diagnose_checksum_failure(self, touched: list[str], url: str, text: str) -> StorageError:
        """Re-read the objects a failed ranged read touched, whole, against their SHA-256."""
        listed = [key for key in touched if key in self._checksums]
        for key in listed:
            try:
                self.store.get(f"{layout.version_dir(self.version)}/{key}", expected=self._checksums[key])
            except ChecksumError as exc:
                return ChecksumError(f"corrupt object {self._object_url(key)}: its bytes do not match the version's "
                                     f"checksum list ({exc})", url=self._object_url(key))
        if listed:
            where = ", ".join(self._object_url(key) for key in listed)
            return RangeReadError(
                f"the store served wrong bytes for a byte-range read of {where}: the chunk failed its CRC32C "
                f"({text}), yet the whole object matches its SHA-256, so the atlas is intact and the store "
                "(or a proxy in front of it) mis-serves range requests; fix the store, or open the atlas with "
                f"open_atlas({self.url!r}, ranged_reads=False) to read whole objects instead",
                url=self._object_url(listed[0]))
        return ChecksumError(f"checksum mismatch in {url}: {text}", url=url)

    def _check_unit(self, entry: dict, unit: int, what: str) -> None:
        if not any(start <= unit < stop for start, stop in entry["units"]):
            raise StorageError(f"atlas {self.url}: unit {unit} has no {what} in version {self.version}")

    def render(self, model: str, layer: str, unit: int, kind: str = "channel", *, basis: str = layout.CHANNELS) -> np.ndarray:
        """One unit's render as uint8 [H, W, 3] (or [S, H, W, 3] for multi-sample kinds)."""
        layer = layout.layer_key(layer, basis)
        entry = self._render_entry(model, layer, kind)
        self._check_unit(entry, int(unit), f"{kind!r} render of {model}/{layer}")
        array = self.array(entry["array"])
        key = renders.shard_key(renders.geometry_from_metadata(self.manifest["arrays"][entry["array"]]["metadata"]), int(unit))
        return self._read(array, entry["array"], int(unit), key)

    def layer_renders(self, model: str, layer: str, kind: str = "channel", *, basis: str = layout.CHANNELS) -> tuple[np.ndarray, np.ndarray]:
        """All rendered units of a layer for a grid view: (unit indices, uint8 images [n, ...])."""
        layer = layout.layer_key(layer, basis)
        entry = self._render_entry(model, layer, kind)
        array = self.array(entry["array"])
        units = np.array([u for a, b in entry["units"] for u in range(a, b)], dtype=np.int64)
        if len(entry["units"]) == 1:
            start, stop = entry["units"][0]
            images = self._read(array, entry["array"], slice(start, stop), None)
        else:
            images = np.concatenate([self._read(array, entry["array"], slice(a, b), None) for a, b in entry["units"]])
        return units, images

    def render_units(self, model: str, layer: str, kind: str = "channel", *, basis: str = layout.CHANNELS) -> list[int]:
        """Units that have a render of this kind."""
        layer = layout.layer_key(layer, basis)
        return [u for a, b in self._render_entry(model, layer, kind)["units"] for u in range(a, b)]

    def render_samples(self, model: str, layer: str, kind: str = "channel", *, basis: str = layout.CHANNELS) -> int:
        """Images per unit of a render kind (1, or the size of a diversity set)."""
        layer = layout.layer_key(layer, basis)
        shape = self.manifest["arrays"][self._render_entry(model, layer, kind)["array"]]["metadata"]["shape"]
        return 1 if len(shape) == 4 else int(shape[1])

    # ---- example pictures -------------------------------------------------------------------
    def example_kinds(self, model: str, layer: str, *, basis: str = layout.CHANNELS) -> list[str]:
        """Kinds of stored example pictures of a layer (top, bottom, samples); [] without a scan."""
        layer = layout.layer_key(layer, basis)
        return [k for k in examples.KINDS if k in self._layer(model, layer).get("examples", {})]

    def example_pictures(self, model: str, layer: str, unit: int, kind: str = "top", *, basis: str = layout.CHANNELS) -> "ExamplePictures":
        """One unit's stored example pictures and heat maps of one kind (two ranged reads)."""
        layer = layout.layer_key(layer, basis)
        entry = self._layer(model, layer).get("examples", {}).get(kind)
        if entry is None:
            raise StorageError(f"atlas {self.url}: no {kind!r} example pictures for {model}/{layer} in version "
                               f"{self.version}; kinds: {self.example_kinds(model, layer)}")
        unit = int(unit)
        if not any(start <= unit < stop for start, stop in entry["units"]):
            raise StorageError(f"atlas {self.url}: unit {unit} of {model}/{layer} has no {kind!r} example pictures "
                               f"in version {self.version}")
        metas = {what: self.manifest["arrays"][entry[what]]["metadata"] for what in examples.WHAT}
        geometry = examples.geometry_from_metadata(metas["pictures"], metas["heatmaps"])
        values = {}
        for what in examples.WHAT:
            key = examples.shard_key(geometry, unit, len(metas[what]["shape"]))
            values[what] = self._read(self.array(entry[what]), entry[what], unit, key)
        return ExamplePictures(values["pictures"], values["heatmaps"])

    def objective(self, model: str, layer: str, unit: int, kind: str = "channel", *, basis: str = layout.CHANNELS) -> float | np.ndarray:
        """The final objective value of a unit's render."""
        layer = layout.layer_key(layer, basis)
        entry = self._render_entry(model, layer, kind)
        self._check_unit(entry, int(unit), f"{kind!r} render of {model}/{layer}")
        value = self._read(self.array(entry["objective"]), entry["objective"], int(unit), None)
        return float(value) if np.ndim(value) == 0 else value

    def activations(self, model: str, layer: str, pooling: str = "max", *, basis: str = layout.CHANNELS) -> "LazyArray":
        """Pooled scan activations (images x channels), read lazily: index it like a numpy array."""
        layer = layout.layer_key(layer, basis)
        entry = self._layer(model, layer)["activations"].get(pooling)
        if entry is None:
            raise StorageError(f"atlas {self.url}: no {pooling!r} activations for {model}/{layer}")
        return LazyArray(self, entry["array"])

    # ---- tables -------------------------------------------------------------------------
    def _table_file(self, path: str, entry: dict) -> pa.Table:
        if path not in self._tables:
            rel = f"{layout.version_dir(self.version)}/{path}"
            self._tables[path] = tables.decode(self.store.get(rel, expected=entry))
        return self._tables[path]

    def _table_files(self, files: Mapping[str, dict]) -> pa.Table | None:
        parts = [self._table_file(path, entry) for path, entry in sorted(files.items())]
        if not parts:
            return None
        return pa.concat_tables(parts, promote_options="permissive")

    def units_table(self, model: str, layer: str, *, basis: str = layout.CHANNELS) -> pa.Table:
        """One row per unit of a layer, sorted by unit: statistics (reduce), render scores (render
        items) and natural ratios (score items), joined on `unit`; a column several parts hold takes
        the first non-null value in part order."""
        layer = layout.layer_key(layer, basis)
        if (model, layer) not in self._units_tables:  # joined once per layer: a version never changes
            files = self._layer(model, layer)["tables"].get(tables.UNITS, {})
            parts = [self._table_file(path, entry) for path, entry in sorted(files.items())]
            if not parts:
                raise StorageError(f"atlas {self.url}: no units table for {model}/{layer} in version {self.version}")
            self._units_tables[(model, layer)] = join_on_unit(parts)
        return self._units_tables[(model, layer)]

    def examples(self, model: str, layer: str, unit: int | None = None, *, basis: str = layout.CHANNELS) -> pa.Table:
        """Dataset example rows of a layer, or of one unit."""
        layer = layout.layer_key(layer, basis)
        table = self._table_files(self._layer(model, layer)["tables"].get(tables.EXAMPLES, {}))
        if table is None:
            raise StorageError(f"atlas {self.url}: no examples table for {model}/{layer} in version {self.version}")
        if unit is None:
            return table
        return table.filter(pc.equal(table.column("unit"), int(unit)))

    def _unit_table(self, name: str, model: str, layer: str, unit: int | None) -> pa.Table:
        table = self._table_files(self._layer(model, layer)["tables"].get(name, {}))
        if table is None:
            raise StorageError(f"atlas {self.url}: no {name} table for {model}/{layer} in version {self.version}")
        return table if unit is None else table.filter(pc.equal(table.column("unit"), int(unit)))

    def samples(self, model: str, layer: str, unit: int | None = None, *, basis: str = layout.CHANNELS) -> pa.Table:
        """Random samples per activation band (unit, band, slot, image, value, band edges, crop boxes)."""
        layer = layout.layer_key(layer, basis)
        return self._unit_table(tables.SAMPLES, model, layer, unit)

    def histograms(self, model: str, layer: str, *, basis: str = layout.CHANNELS) -> pa.Table:
        """Histograms of every unit's per-image max (unit, bin, lower, upper, count)."""
        layer = layout.layer_key(layer, basis)
        return self._unit_table(tables.HISTOGRAMS, model, layer, None)

    def histogram(self, model: str, layer: str, unit: int, *, basis: str = layout.CHANNELS) -> pa.Table:
        """One unit's histogram rows, by bin."""
        layer = layout.layer_key(layer, basis)
        return self._unit_table(tables.HISTOGRAMS, model, layer, unit).sort_by("bin")

    # ---- notebook display --------------------------------------------------------------
    def unit(self, model: str, layer: str, unit: int, *, basis: str = layout.CHANNELS) -> "display.UnitView":
        """A unit's renders, top/bottom examples and statistics; shows itself as HTML in Jupyter."""
        layer = layout.layer_key(layer, basis)
        return display.unit_view(self, model, layer, int(unit))

    def layer(self, model: str, layer: str, kind: str = "channel", *, basis: str = layout.CHANNELS) -> "display.LayerView":
        """A layer's renders as a grid; shows itself as HTML in Jupyter."""
        layer = layout.layer_key(layer, basis)
        return display.layer_view(self, model, layer, kind)

    def stats(self, model: str, layer: str, unit: int, *, basis: str = layout.CHANNELS) -> dict:
        """A unit's statistics merged from every units-table row about it."""
        layer = layout.layer_key(layer, basis)
        table = self.units_table(model, layer)
        rows = table.filter(pc.equal(table.column("unit"), int(unit))).to_pylist()
        if not rows:
            raise StorageError(f"atlas {self.url}: no statistics for unit {unit} of {model}/{layer}")
        return {k: v for k, v in rows[0].items() if v is not None}

    def images(self) -> pa.Table:
        """The images table (image_id -> uri)."""
        table = self._table_files(self.manifest.get("images_tables", {}))
        if table is None:
            raise StorageError(f"atlas {self.url}: no images table in version {self.version}")
        return table

    # ---- integrity ----------------------------------------------------------------------
    def verify(self) -> int:
        """Read every object of this version whole and check its SHA-256; returns the count checked."""
        sums = self._checksums
        paths = sorted(sums)
        for start in range(0, len(paths), 256):
            batch = paths[start:start + 256]
            got = self.store.get_many([f"{layout.version_dir(self.version)}/{p}" for p in batch])
            for path in batch:
                checksums.verify(got[f"{layout.version_dir(self.version)}/{path}"], sums[path], self._object_url(path))
        return len(paths)


@dataclass(frozen=True)
class ExamplePictures:
    """One unit's example pictures (uint8 [slots, P, P, 3]) and heat maps (float16 [slots, H, H]) of a kind."""

    pictures: np.ndarray
    heatmaps: np.ndarray


@dataclass(frozen=True)
class BasisInfo:
    """One basis of a layer in an atlas: `channels`, or directions/SAE latents from a file."""

    model: str
    layer: str
    name: str
    kind: str  # "channels", "directions" or "sae"
    units: int  # for channels: the units built; for a file basis: all its units
    activation: str | None
    k: int | None
    source: str | None  # the basis file's URL at build time
    sha256: str | None

    @property
    def key(self) -> str:
        return layout.layer_key(self.layer, self.name)


def range_count_of(ranges: list[list[int]]) -> int:
    return sum(int(b) - int(a) for a, b in ranges)


def join_on_unit(parts: list[pa.Table]) -> pa.Table:
    """Outer-join tables on `unit`: one row per unit, sorted; for a column in several parts, the
    first non-null value in part order."""
    units = pa.chunked_array([p.column("unit").cast(pa.int64()) for p in parts]).unique().sort()
    joined = pa.table({"unit": units})
    for part in parts:
        part = part.cast(pa.schema([f.with_type(pa.int64()) if f.name == "unit" else f for f in part.schema]))
        if len(pc.unique(part.column("unit"))) != part.num_rows:
            # "first" is an ordered aggregation: it needs single-threaded execution to mean row order.
            part = part.group_by("unit", use_threads=False).aggregate(
                [(c, "first") for c in part.column_names if c != "unit"])
        part = part.rename_columns([c[:-len("_first")] if c.endswith("_first") else c for c in part.column_names])
        right = part.rename_columns([c if c == "unit" else f"__new__{c}" for c in part.column_names])
        joined = joined.join(right, "unit", join_type="left outer")
        for name in [c for c in part.column_names if c != "unit"]:
            new = joined.column(f"__new__{name}")
            if name in joined.column_names:
                merged = pc.coalesce(joined.column(name), new.cast(joined.column(name).type))
                joined = joined.set_column(joined.column_names.index(name), name, merged)
            else:
                joined = joined.append_column(name, new)
            joined = joined.drop_columns([f"__new__{name}"])
    unit_type = parts[0].schema.field("unit").type
    return joined.set_column(0, "unit", joined.column("unit").cast(unit_type)).sort_by("unit")


class RangeReadError(StorageError):
    """The store answered a byte-range request with the wrong bytes; the stored object is intact."""


class LazyArray:
    """A stored array read on demand through the atlas's guarded reads (missing objects and
    mis-served ranges are reported as such, never returned as fill values)."""

    def __init__(self, atlas: Atlas, path: str) -> None:
        self._atlas = atlas
        self.path = path
        self.zarr = atlas.array(path)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.zarr.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.zarr.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, selection: Any) -> np.ndarray:
        return self._atlas._read(self.zarr, self.path, selection, None)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        values = self[...]
        return values if dtype is None else values.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyArray({self.path!r}, shape={self.shape}, dtype={self.dtype})"
