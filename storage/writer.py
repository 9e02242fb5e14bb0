"""Writing a new atlas version: declare arrays, write work items, reuse finished items, publish.

One `AtlasWriter` per build (driver side) and one per worker process are fine: all state lives in
storage. Every work item goes through `writer.item(key)`; its data objects are uploaded first and
its completion record last, so a record's presence means the item is fully written. The driver's
writer holds the draft's lease (storage/lease.py): only the lease holder may seal and publish.
"""

from __future__ import annotations

import contextlib
import json
from collections import OrderedDict
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa

from loupe.storage import activations, arrays, checksums, examples, layout, manifest, probe, publish, renders, tables
from loupe.storage.checksums import canonical_json
from loupe.storage.completion import ItemRecord
from loupe.storage.errors import StorageError, VersionNotFoundError
from loupe.storage.item_writer import ItemWriter
from loupe.storage.lease import DEFAULT_TTL_S, Lease
from loupe.storage.objects import ConditionFailedError, ObjectStore
from loupe.storage.status import VersionStatus
from loupe.storage.urls import resolve

_UNSET: Any = object()
#: Completion records whose object checksums a writer keeps for reading partials back.
_RECORD_CACHE = 4096


class AtlasWriter:
    """Writer for one unpublished version of the atlas at `url`."""

    def __init__(self, store: ObjectStore, version: str, draft: dict, lease: Lease | None = None) -> None:
        self.store = store
        self.version = version
        self.draft = draft
        self.lease = lease
        self._meta_cache: dict[str, bytes] = {}
        self._pending: dict[str, bytes] | None = None  # declarations queued by `declaring()`
        self._new_version = False  # created by this writer: nothing to read back before declaring
        self._record_objects: OrderedDict[str, dict] = OrderedDict()

    # ---- creating and resuming -------------------------------------------------------------
    @classmethod
    def create(
        cls,
        url: str,
        *,
        config: Mapping[str, Any] | None = None,
        models: Mapping[str, Mapping[str, Any]] | None = None,
        code_version: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        base_version: str | None = _UNSET,
        lease_ttl_s: float = DEFAULT_TTL_S,
    ) -> "AtlasWriter":
        """Start a new version, owned by this writer's lease. `base_version` defaults to the version
        published now; publish succeeds only if the pointer still names it (compare-and-swap).

        The lease is taken before version.json is written, so no other build ever sees the draft
        unowned. Raises ConditionalWritesIgnoredError for a store that cannot own drafts safely.
        """
        store = ObjectStore(resolve(url, storage_options))
        probe.require_conditional_writes(store)
        if base_version is _UNSET:
            current = publish.read_pointer(store)
            base_version = current["version"] if current else None
        version = layout.new_version_id()
        lease = Lease.acquire(store, version, lease_ttl_s)
        config_json = json.loads(canonical_json(dict(config or {})))
        draft = {
            "format": layout.FORMAT,
            "version": version,
            "status": VersionStatus.BUILDING.value,
            "created_at": manifest.utc_now(),
            "base_version": base_version,
            "config": config_json,
            "config_sha256": manifest.config_digest(config_json),
            "models": json.loads(canonical_json(dict(models or {}))),
            "code_version": code_version,
        }
        store.put(layout.draft_info(version), canonical_json(draft))
        writer = cls(store, version, draft, lease)
        writer._new_version = True  # a version id of our own: no array of it can exist yet
        return writer

    @classmethod
    def resume(cls, url: str, version: str, storage_options: Mapping[str, Any] | None = None, *,
               take_lease: bool = False, lease_ttl_s: float = DEFAULT_TTL_S) -> "AtlasWriter":
        """Reopen an unpublished version.

        Workers open a draft without its lease, only to write items. The build driver passes
        take_lease=True to own it (LeaseHeldError names the live holder otherwise); an owner may
        also reopen a sealed, never-published version, whose publish() then only swaps the pointer.
        """
        layout.check_version_id(version)
        store = ObjectStore(resolve(url, storage_options))
        raw = store.get_optional(layout.draft_info(version))
        if raw is None:
            raise VersionNotFoundError(f"no version {version} in atlas {url}", url=store.location.url_of(layout.version_dir(version)))
        if not take_lease:
            if store.exists(layout.manifest(version)):
                raise StorageError(f"version {version} of atlas {url} is already sealed; start a new version instead", url=url)
            return cls(store, version, json.loads(raw))
        probe.require_conditional_writes(store)
        lease = Lease.acquire(store, version, lease_ttl_s)
        return cls(store, version, json.loads(raw), lease)

    def release(self) -> None:
        """Give up the draft's lease (the build ends); safe to call more than once."""
        if self.lease is not None:
            self.lease.release()

    @property
    def url(self) -> str:
        return self.store.location.url

    @property
    def base_version(self) -> str | None:
        return self.draft.get("base_version")

    def _rel(self, path: str) -> str:
        return f"{layout.version_dir(self.version)}/{path}"

    # ---- arrays ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def declaring(self) -> Iterator[None]:
        """Batch the `declare_*` calls of the block: on leaving it, every array's metadata is read
        and the missing ones written concurrently (two rounds of requests on an object store instead
        of two sequential requests per array, which is seconds for a model with many layers). A
        writer that created its version skips the reads: no other writer can have declared yet."""
        if self._pending is not None:
            yield
            return
        self._pending = {}
        try:
            yield
            pending = self._pending
        finally:
            self._pending = None
        rels = {path: self._rel(f"{path}/{arrays.METADATA_KEY}") for path in pending}
        unknown = [] if self._new_version else [rels[p] for p in pending if p not in self._meta_cache]
        stored = self.store.get_many_optional(unknown)
        missing = {}
        for path, meta in pending.items():
            existing = self._meta_cache.get(path) or stored.get(rels[path])
            self._check_declared(rels[path], existing, meta)
            if existing is None:
                missing[rels[path]] = meta
        self.store.put_many(missing)
        self._meta_cache.update(pending)

    def _declare(self, path: str, meta: bytes) -> None:
        """Queue one declaration; outside a `declaring()` block it is written at once (a block of one)."""
        with self.declaring():
            self._check_declared(self._rel(f"{path}/{arrays.METADATA_KEY}"), self._pending.get(path), meta)
            self._pending[path] = meta

    def _check_declared(self, rel: str, existing: bytes | None, meta: bytes) -> None:
        if existing is not None and existing != meta:
            raise StorageError(
                f"array {self.store.location.url_of(rel)} was already declared with a different shape or layout "
                "in this version", url=self.store.location.url_of(rel))

    def declare_renders(self, model: str, layer: str, kind: str, *, n_units: int, height: int, width: int,
                        units_per_shard: int, samples: int | None = None, channels: int = 3) -> None:
        """Create (idempotently) the render and objective arrays of one kind for a layer.

        n_units is the layer's (or basis's) unit count: a unit's index is its channel (or latent)
        index. `channels` 4 stores RGBA (MACO renders: alpha is the transparency map). Call once,
        from the build driver, before any item writes renders of this kind.
        """
        geometry = renders.RenderGeometry(n_units, height, width, units_per_shard, samples, channels)
        geometry.validate(f"renders of {model}/{layer}/{kind}")
        attrs = {"loupe": {"model": model, "layer": layer, "kind": kind}}
        self._declare(layout.render_array(model, layer, kind), renders.images_metadata(geometry, attrs))
        self._declare(layout.objective_array(model, layer, kind), renders.objective_metadata(geometry, attrs))

    def declare_examples(self, model: str, layer: str, kind: str, *, n_units: int, slots: int, example_size: int,
                         heatmap_size: int, units_per_shard: int) -> None:
        """Create (idempotently) one kind's example-picture and heat-map arrays for a layer."""
        where = f"example pictures of {model}/{layer}/{kind}"
        examples.check_kind(kind, where)
        geometry = examples.ExampleGeometry(n_units, slots, example_size, heatmap_size, units_per_shard)
        geometry.validate(where)
        attrs = {"loupe": {"model": model, "layer": layer, "kind": kind}}
        self._declare(layout.example_array(model, layer, kind, "pictures"), examples.pictures_metadata(geometry, attrs))
        self._declare(layout.example_array(model, layer, kind, "heatmaps"), examples.heatmaps_metadata(geometry, attrs))

    def declare_activations(self, model: str, layer: str, *, n_images: int, n_channels: int,
                            images_per_chunk: int, dtype: str = "float16",
                            poolings: Sequence[str] = activations.POOLINGS) -> None:
        """Create (idempotently) the pooled-activation arrays (images x channels) for a layer."""
        for pooling in poolings:
            if pooling not in activations.POOLINGS:
                raise StorageError(f"unknown pooling {pooling!r} for {model}/{layer}; expected one of {activations.POOLINGS}")
            attrs = {"loupe": {"model": model, "layer": layer, "pooling": pooling}}
            meta = activations.metadata(n_images, n_channels, images_per_chunk, dtype, attrs)
            self._declare(layout.activation_array(model, layer, pooling), meta)

    def array_metadata(self, path: str) -> bytes:
        """zarr.json bytes of a declared array of this version (cached per process)."""
        if path not in self._meta_cache:
            raw = self.store.get_optional(self._rel(f"{path}/{arrays.METADATA_KEY}"))
            if raw is None:
                raise StorageError(
                    f"array {self.store.location.url_of(self._rel(path))} is not declared in version {self.version}; "
                    "call declare_renders/declare_activations first", url=self.store.location.url_of(self._rel(path)))
            self._meta_cache[path] = raw
        return self._meta_cache[path]

    # ---- work items -----------------------------------------------------------------------
    def item(self, key: str, meta: Mapping[str, Any] | None = None) -> "ItemWriter":
        """Open a work item; use as a context manager, or call commit() after the writes."""
        layout.check_name(key, "work item key")
        return ItemWriter(self, key, dict(meta or {}))

    def is_complete(self, key: str) -> bool:
        """Whether a work item's completion record exists in this version (one request)."""
        return self.store.exists(layout.item_record(self.version, key))

    def completed_items(self) -> set[str]:
        """Keys of every completed work item in this version (one paginated LIST)."""
        return _item_keys(self.store, self.version)

    def item_record(self, key: str) -> ItemRecord | None:
        raw = self.store.get_optional(layout.item_record(self.version, key))
        return None if raw is None else ItemRecord.from_bytes(raw, self.store.location.url_of(layout.item_record(self.version, key)))

    def read_partial(self, key: str, name: str) -> bytes:
        """Read back a completed item's partial, verified against the checksum in its record.

        Records are written once, so each item's record is read once per writer (a bounded
        cache): a per-layer reduce reads one partial of every shard, and a shard's record lists
        the partials of all its layers.
        """
        objects = self._record_objects_of(key, required=False)
        path = layout.partial(key, name)
        if path not in objects:
            url = self.store.location.url_of(self._rel(path))
            raise StorageError(f"work item {key} has no completed partial {name!r} ({url})", url=url)
        return self.store.get(self._rel(path), objects[path])

    def _record_objects_of(self, key: str, *, required: bool = True) -> dict:
        """The objects a completed item's record lists (records are written once: cached, bounded).
        An item without a record raises, or gives {} when not `required`."""
        objects = self._record_objects.get(key)
        if objects is None:
            record = self.item_record(key)
            if record is None:
                if not required:
                    return {}
                url = self.store.location.url_of(layout.item_record(self.version, key))
                raise StorageError(f"work item {key} is not complete in version {self.version} ({url})", url=url)
            objects = record.objects
            self._record_objects[key] = objects
            while len(self._record_objects) > _RECORD_CACHE:
                self._record_objects.popitem(last=False)
        return objects

    def read_table_part(self, key: str, table: str, model: str, layer: str) -> pa.Table:
        """A completed item's table part in this draft, verified against the item's record."""
        path = layout.table_part(table, key, model, layer)
        objects = self._record_objects_of(key)
        if path not in objects:
            url = self.store.location.url_of(self._rel(path))
            raise StorageError(f"work item {key} wrote no {table} table for {model}/{layer} ({url})", url=url)
        return tables.decode(self.store.get(self._rel(path), objects[path]))

    def read_activation_chunks(self, model: str, layer: str, pooling: str,
                               keys: Sequence[str]) -> Iterator[tuple[int, np.ndarray]]:
        """(first image, values [rows, channels]) of each activation chunk the scan items `keys` wrote
        for this array, item by item, one verified chunk at a time (bounded memory)."""
        path = layout.activation_array(model, layer, pooling)
        meta_bytes = self.array_metadata(path)
        meta = json.loads(meta_bytes)
        per_chunk = arrays.outer_chunk_shape(meta)[0]
        n_images = meta["shape"][0]
        for key in keys:
            objects = self._record_objects_of(key)
            chunk_paths = sorted((p for p in objects if p.startswith(path + "/c/")),
                                 key=lambda p: int(p[len(path) + 3:].split("/")[0]))
            for chunk_path in chunk_paths:
                data = self.store.get(self._rel(chunk_path), objects[chunk_path])
                index = int(chunk_path[len(path) + 3:].split("/")[0])
                start, stop = index * per_chunk, min((index + 1) * per_chunk, n_images)
                yield start, activations.decode_chunk(meta_bytes, chunk_path[len(path) + 1:], data, start, stop)

    def reuse_items(self, keys: Iterable[str], source: str | None = _UNSET) -> set[str]:
        """Copy finished items from another version instead of recomputing them.

        `source` defaults to the published version; any version with completion records works,
        including an unpublished one left by an interrupted build. Items are copied object by
        object (server-side on S3) and their record is written last. Returns the keys reused;
        items missing from the source, or whose arrays have a different layout here, are not.
        """
        if source is _UNSET:
            pointer = publish.read_pointer(self.store)
            source = pointer["version"] if pointer else None
        if source is None or source == self.version:
            return set()
        layout.check_version_id(source)
        wanted = set(keys) - self.completed_items()
        available = sorted(wanted & _item_keys(self.store, source))
        if not available:
            return set()
        raw = self.store.get_many([layout.item_record(source, k) for k in available])
        reusable: list[ItemRecord] = []
        for key in available:
            where = self.store.location.url_of(layout.item_record(source, key))
            record = ItemRecord.from_bytes(raw[layout.item_record(source, key)], where)
            if self._same_layout(record):
                reusable.append(record)
        reused: set[str] = set()
        for batch_start in range(0, len(reusable), 256):
            batch = reusable[batch_start:batch_start + 256]
            pairs = [(f"{layout.version_dir(source)}/{p}", self._rel(p)) for r in batch for p in r.objects]
            try:
                self.store.copy_many(pairs)
            except StorageError:
                batch = [r for r in batch if self._copy_one(source, r)]
            self.store.copy_many([(layout.item_record(source, r.key), layout.item_record(self.version, r.key)) for r in batch])
            reused.update(r.key for r in batch)
        return reused

    def _copy_one(self, source: str, record: ItemRecord) -> bool:
        try:
            self.store.copy_many([(f"{layout.version_dir(source)}/{p}", self._rel(p)) for p in record.objects])
            return True
        except StorageError:
            return False

    def _same_layout(self, record: ItemRecord) -> bool:
        for path, fingerprint in record.arrays.items():
            try:
                meta = json.loads(self.array_metadata(path))
            except StorageError:
                return False
            if json.loads(canonical_json(arrays.layout_fingerprint(meta))) != fingerprint:
                return False
        return True

    # ---- publishing -----------------------------------------------------------------------
    def is_sealed(self) -> bool:
        """Whether manifest.json exists: the version is complete and will never be rewritten."""
        return self.store.exists(layout.manifest(self.version))

    def publish(self, expected_items: Iterable[str] | None = None) -> dict:
        """Seal this version (manifest + checksums) once, and swap the pointer to it, last.

        Needs the draft's lease, renewed before sealing and before the swap, so a build that lost
        its draft never seals or publishes it (a writer opened without it takes it for the publish,
        or gets LeaseHeldError naming the live build that holds it). An already sealed version is
        not sealed again: its manifest is published as it is. With `expected_items`, refuses to publish unless every one
        of them is complete. Raises PublishConflictError if another build published since this
        version was created; this version then stays complete and intact, but unpublished.
        """
        if self.lease is not None:
            return self._publish(self.lease, expected_items)
        # Opened without the lease (AtlasWriter.resume): own the draft for the length of the publish.
        probe.require_conditional_writes(self.store)
        self.lease = Lease.acquire(self.store, self.version)
        try:
            return self._publish(self.lease, expected_items)
        finally:
            self.release()
            self.lease = None

    def _publish(self, lease: Lease, expected_items: Iterable[str] | None) -> dict:
        store, version = self.store, self.version
        lease.renew()
        manifest_bytes = store.get_optional(layout.manifest(version))
        if manifest_bytes is None:
            manifest_bytes = self._seal(expected_items)
        elif expected_items is not None:
            self._check_complete(expected_items, self.completed_items())
        built = manifest.parse(manifest_bytes, store.location.url_of(layout.manifest(version)))
        pointer = {
            "format": layout.FORMAT,
            "version": version,
            "manifest": layout.manifest(version),
            "manifest_sha256": checksums.sha256(manifest_bytes),
            "previous": self.base_version,
            "published_at": manifest.utc_now(),
        }
        lease.renew()
        publish.swap_pointer(store, self.base_version, pointer)
        store.put(layout.published_marker(version), canonical_json(pointer))
        return built

    def _check_complete(self, expected_items: Iterable[str], keys: Iterable[str]) -> None:
        missing = sorted(set(expected_items) - set(keys))
        if missing:
            raise StorageError(
                f"cannot publish version {self.version} of {self.url}: {len(missing)} work item(s) are not complete, "
                f"e.g. {', '.join(missing[:5])}", url=self.url)

    def _seal(self, expected_items: Iterable[str] | None) -> bytes:
        """Write checksums.json, then manifest.json exactly once (a conditional create)."""
        store, version = self.store, self.version
        keys = sorted(self.completed_items())
        if expected_items is not None:
            self._check_complete(expected_items, keys)
        raw = store.get_many([layout.item_record(version, k) for k in keys])
        records = [ItemRecord.from_bytes(raw[layout.item_record(version, k)], store.location.url_of(layout.item_record(version, k)))
                   for k in keys]
        listing = store.list_files(layout.version_dir(version))
        prefix = layout.version_dir(version) + "/"
        for record in records:
            for path, entry in record.objects.items():
                size = listing.get(prefix + path)
                if size is None or size != entry["size"]:
                    url = store.location.url_of(prefix + path)
                    raise StorageError(f"work item {record.key}: object {url} is missing or has the wrong size", url=url)
        meta_paths = sorted(p[len(prefix):-len("/zarr.json")] for p in listing
                            if p.startswith(prefix) and p.endswith("/zarr.json"))
        meta_raw = store.get_many([prefix + p + "/zarr.json" for p in meta_paths])
        array_entries = {p: (checksums.entry(meta_raw[prefix + p + "/zarr.json"]),
                             json.loads(meta_raw[prefix + p + "/zarr.json"])) for p in meta_paths}
        draft_bytes = store.get(layout.draft_info(version))
        extra = {"version.json": checksums.entry(draft_bytes)}
        built, sums = manifest.build(self.draft, records, array_entries, extra)
        sums_bytes = canonical_json(sums)
        built["checksums"] = {"path": "checksums.json", **checksums.entry(sums_bytes)}
        manifest_bytes = canonical_json(built)
        store.put(layout.checksums(version), sums_bytes)
        try:
            store.put_conditional(layout.manifest(version), manifest_bytes, expected_tag=None)
        except ConditionFailedError:
            # Sealed meanwhile (only possible if this writer's lease lapsed): publish what is there.
            return store.get(layout.manifest(version))
        return manifest_bytes


def _item_keys(store: ObjectStore, version: str) -> set[str]:
    files = store.list_files(layout.items_dir(version))
    prefix = layout.items_dir(version) + "/"
    return {p[len(prefix):-len(".json")] for p in files if p.startswith(prefix) and p.endswith(".json")
            and "/" not in p[len(prefix):] and not p[len(prefix):].startswith(".")}
