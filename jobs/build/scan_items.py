"""Scan work items: list the dataset once, one item per chunk-aligned shard, one reduce per model.

A scan item streams its shard's pooled activations straight into the atlas (each shard owns its
chunks) and saves its mergeable result as a partial; the reduce item merges every shard's partial
into the per-unit statistics and top/bottom examples tables.

Everything shared through storage is plain data written and verified by `loupe.storage.build_state`:
the listing as Parquet, receptive fields and scan partials as npz of numbers (`ScanResult.state()`),
never pickles, so a planted object is refused with its URL instead of run.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from loupe.jobs.build.config import ScanConfig
from loupe.jobs.build.plan import ReduceSpec, ScanSpec, WorkItem, item_meta, make_item, model_identity
from loupe.jobs.build.resolve import ResolvedModel
from loupe.pipeline.data import Listing, LoaderOptions, list_images
from loupe.pipeline.errors import LoupeError
from loupe.storage import AtlasWriter, StorageError, plan_image_chunks
from loupe.storage.build_state import BuildState, partial_url, read_partial_arrays, write_partial_arrays

PARTIAL = "scan-result.npz"


def list_dataset(scan: ScanConfig) -> Listing:
    """List the dataset once on the driver (errors name the URL, before any compute)."""
    dataset = scan.dataset
    return list_images(dataset.url, storage_options=dataset.storage_options, format=dataset.format,
                       image_column=dataset.image_column, id_column=dataset.id_column)


def scan_context(scan: ScanConfig | None, listing: Listing | None) -> dict[str, Any] | None:
    if scan is None or listing is None:
        return None
    return {"dataset_storage_options": scan.dataset.storage_options, "listing_fingerprint": listing.fingerprint}


def save_receptive_fields(writer: AtlasWriter, model: ResolvedModel) -> str:
    """Probe the exact crop boxes of every scanned layer once, save them for the scan workers, return their key.

    They depend only on the architecture and input size, so they are keyed by those and reused by
    later builds; a saved copy is read back (verified) here, so a bad one fails the build before
    any item runs.
    """
    from loupe.pipeline.scan import fields_state, probe_receptive_fields

    layers = scanned_layers(model)
    identity = json.dumps({"source": model.config.source, "kwargs": model.config.model_kwargs,
                           "input_size": model.model.preprocessing.input_size, "layers": layers}, sort_keys=True)
    key = hashlib.sha256(identity.encode()).hexdigest()[:32]
    state = BuildState.of(writer)
    if _decode_fields(state, key) is None:
        state.put_receptive_fields(key, fields_state(probe_receptive_fields(model.model, layers)))
    return key


def _decode_fields(state: BuildState, key: str) -> dict | None:
    from loupe.pipeline.scan import fields_from_state

    arrays = state.get_receptive_fields(key)
    if arrays is None:
        return None
    try:
        return fields_from_state(arrays)
    except LoupeError as exc:
        url = state.receptive_fields_url(key)
        raise StorageError(f"receptive fields {url} are malformed: {exc}", url=url) from None


def _receptive_fields(runner) -> dict | None:
    """The fields the driver saved (verified on every read), once per actor."""
    context = runner.scan_context or {}
    key = context.get("receptive_fields")
    if not key:
        return None
    cached = getattr(runner, "_receptive_fields", None)
    if cached is None or cached[0] != key:
        fields = _decode_fields(BuildState.of(runner.writer), key)
        if fields is None:
            raise StorageError(f"receptive fields {key} were not saved in {runner.writer.url}/build-state", url=runner.writer.url)
        runner._receptive_fields = cached = (key, fields)
    return cached[1]


def scanned_layers(model: ResolvedModel) -> list[str]:
    return [layer.info.name for layer in model.layers]


def plan_scan(model: ResolvedModel, scan: ScanConfig, listing: Listing, *, write_images: bool) -> list[WorkItem]:
    """One item per shard (chunk-aligned image range), then the model's reduce item.

    Exactly one model's reduce (`write_images`) also writes the dataset's images table (id -> URI).
    """
    per_chunk, ranges = plan_image_chunks(len(listing), min(scan.shards, len(listing)))
    identity = model_identity(model)
    layers = tuple(scanned_layers(model))
    items = [
        make_item(model.id, identity, ScanSpec(
            layers=layers, k=scan.k, listing=listing.fingerprint, chunk_images=per_chunk,
            pooled=scan.pooled_activations, shard_index=index, shard_count=len(ranges), start=start, stop=stop,
            images_per_batch=scan.images_per_batch, decode_workers=scan.decode_workers,
        ), cost=stop - start)
        for index, (start, stop) in enumerate(ranges)
    ]
    reduce = ReduceSpec(layers=layers, scan_items=tuple(i.key for i in items), listing=listing.fingerprint,
                        write_images=write_images)
    return items + [make_item(model.id, identity, reduce, cost=0)]


def declare_scan_arrays(writer: AtlasWriter, model: ResolvedModel, scan: ScanConfig, listing: Listing) -> None:
    """Declare pooled-activation arrays (images x channels, chunked like the shards) and save the listing."""
    save_listing(writer, listing)
    if not scan.pooled_activations:
        return
    per_chunk, _ = plan_image_chunks(len(listing), min(scan.shards, len(listing)))
    for layer in model.layers:
        writer.declare_activations(model.id, layer.info.name, n_images=len(listing),
                                   n_channels=layer.info.channels, images_per_chunk=per_chunk)


def save_listing(writer: AtlasWriter, listing: Listing) -> None:
    """Save the listing once for every worker and later build; a saved one is verified here, before compute."""
    state = BuildState.of(writer)
    if load_listing(state, listing.fingerprint) is None:
        state.put_listing(listing.fingerprint, listing.to_table())


def load_listing(state: BuildState, fingerprint: str) -> Listing | None:
    """The saved listing with this fingerprint (checksum, format and fingerprint verified), or None."""
    table = state.get_listing(fingerprint)
    if table is None:
        return None
    url = state.listing_url(fingerprint)
    try:
        loaded = Listing.from_table(table, url)
    except LoupeError as exc:
        raise StorageError(str(exc), url=url) from None
    if loaded.fingerprint != fingerprint:
        raise StorageError(f"listing {url} describes listing {loaded.fingerprint[:16]}..., not {fingerprint[:16]}...",
                           url=url)
    return loaded


def run_scan_stage(runner, item: WorkItem) -> dict[str, Any]:
    """Execute a scan or reduce item inside an ItemRunner."""
    if item.stage == "scan":
        return _run_scan(runner, item)
    if item.stage == "reduce":
        return _run_reduce(runner, item)
    raise ValueError(f"unknown work item stage {item.stage!r}")


def _listing(runner, fingerprint: str) -> Listing:
    cached = getattr(runner, "_listing", None)
    if cached is None or cached.fingerprint != fingerprint:
        cached = load_listing(BuildState.of(runner.writer), fingerprint)
        if cached is None:
            raise StorageError(f"listing {fingerprint} was not saved in {runner.writer.url}/build-state", url=runner.writer.url)
        runner._listing = cached
    return cached


def _run_scan(runner, item: WorkItem) -> dict[str, Any]:
    from loupe.pipeline.scan import ScanOptions, Scanner, scan_dataset

    spec: ScanSpec = item.spec
    shard = _listing(runner, spec.listing).slice(spec.start, spec.stop)
    options = ScanOptions(k=spec.k, pooled=spec.pooled, chunk_images=spec.chunk_images)
    key = (spec.layers, options)
    if getattr(runner, "_scanner_key", None) != key:
        runner._scanner = Scanner(runner.model, list(spec.layers), options, receptive_fields=_receptive_fields(runner))
        runner._scanner_key = key
    context = runner.scan_context or {}
    model_id = runner.config.id
    with runner.writer.item(item.key, item_meta(item)) as out:
        def write_chunk(chunk) -> None:
            out.write_activations(model_id, chunk.layer, chunk.start, **{chunk.kind: chunk.values})

        result = scan_dataset(
            runner.model, shard, runner._scanner,
            loader=LoaderOptions(batch_size=spec.images_per_batch, workers=spec.decode_workers),
            storage_options=context.get("dataset_storage_options"),
            on_chunk=write_chunk if spec.pooled else None,
        )
        write_partial_arrays(out, PARTIAL, result.state())
    return {"images": result.scanned, "skipped": len(result.skipped)}


def _run_reduce(runner, item: WorkItem) -> dict[str, Any]:
    spec: ReduceSpec = item.spec
    merged = merge_partials(runner.writer, list(spec.scan_items))
    model_id = runner.config.id
    units, examples = merged.units_table().drop_columns(["model"]), merged.examples_table().drop_columns(["model"])
    skipped = [{"image_id": s.image_id, "reason": s.reason} for s in merged.skipped]
    with runner.writer.item(item.key, {"stage": "reduce", "skipped_images": len(skipped),
                                       "skipped_examples": skipped[:100]}) as out:
        for layer in spec.layers:
            out.write_units(model_id, layer, units.filter(_column_equals(units, "layer", layer)))
            out.write_examples(model_id, layer, examples.filter(_column_equals(examples, "layer", layer)))
        if spec.write_images:
            out.write_images(_listing(runner, spec.listing).images_table())
    return {"images": 0, "skipped": len(skipped)}


def merge_partials(writer: AtlasWriter, keys: list[str]):
    """Merge the scan shards' partials (verified plain arrays) into one ScanResult."""
    from loupe.pipeline.scan import ScanResult, merge_results

    def load(key: str) -> ScanResult:
        try:
            return ScanResult.from_state(read_partial_arrays(writer, key, PARTIAL))
        except LoupeError as exc:
            url = partial_url(writer, key, PARTIAL)
            raise StorageError(f"scan partial {url} of work item {key} is malformed: {exc}", url=url) from None

    return merge_results(load(key) for key in keys)


def _column_equals(table, column: str, value: str):
    import pyarrow.compute as pc

    return pc.equal(table.column(column), value)
