"""Scan and reduce items on a worker: a scan item streams its shard's pooled activations straight
into the atlas (each shard owns its chunks) and saves its mergeable result as one npz partial per
layer (`ScanResult.layer_only(layer).state()`); a reduce item folds one layer's partials, shard by
shard, into that layer's per-unit statistics and top/bottom examples tables, so its memory is one
layer's result plus one shard's layer, whatever the number of shards or layers."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from loupe.jobs.build.plan import FieldsSpec, ReduceSpec, ScanSpec, WorkItem, item_meta
from loupe.jobs.build.shared_state import load_listing, load_receptive_fields
from loupe.pipeline.data import Listing, LoaderOptions
from loupe.pipeline.errors import LoupeError
from loupe.pipeline.models.catalog import LOGITS
from loupe.storage import AtlasWriter, StorageError
from loupe.storage.build_state import BuildState, partial_url, read_partial_arrays, write_partial_arrays


def partial_name(layer_index: int) -> str:
    """The partial holding one layer's statistics (by index: layer names may not be valid object names)."""
    return f"scan-layer-{layer_index:05d}.npz"


def run_scan_stage(runner, item: WorkItem) -> dict[str, Any]:
    """Execute a scan or reduce item inside an ItemRunner."""
    if item.stage == "fields":
        return _run_fields(runner, item)
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


def listing_rows(runner, fingerprint: str, start: int, stop: int) -> Listing:
    """Rows [start, stop) of the saved listing, reading only the listing blocks they overlap.

    A listing saved before listings had blocks is loaded whole (once per actor) and sliced.
    """
    state = BuildState.of(runner.writer)
    rows = state.get_listing_rows(fingerprint, start, stop)
    if rows is None:
        return _listing(runner, fingerprint).slice(start, stop)
    url = state.listing_url(fingerprint)
    try:
        part = replace(Listing.from_table(rows, url), start=start)
    except LoupeError as exc:
        raise StorageError(f"listing {url}, rows [{start}, {stop}): {exc}", url=url) from None
    if part.fingerprint != fingerprint or part.stop != stop:
        raise StorageError(f"listing {url} rows [{start}, {stop}) describe listing "
                           f"{part.fingerprint[:16]}... [{part.start}, {part.stop}), not {fingerprint[:16]}...",
                           url=url)
    return part


def receptive_fields(runner) -> dict | None:
    """The fields the driver saved (verified on every read), once per actor."""
    context = runner.scan_context or {}
    key = context.get("receptive_fields")
    if not key:
        return None
    cached = getattr(runner, "_receptive_fields", None)
    if cached is None or cached[0] != key:
        fields = load_receptive_fields(BuildState.of(runner.writer), key)
        if fields is None:
            raise StorageError(f"receptive fields {key} were not saved in {runner.writer.url}/build-state", url=runner.writer.url)
        runner._receptive_fields = cached = (key, fields)
    return cached[1]


def _run_fields(runner, item: WorkItem) -> dict[str, Any]:
    """Probe and save the model's receptive fields unless a valid copy exists (no completion record:
    the fields live in build state, shared by versions, not in the version)."""
    from loupe.jobs.build.shared_state import save_receptive_fields

    spec: FieldsSpec = item.spec
    probed = save_receptive_fields(runner.writer, runner.model, spec.state_key, spec.layers)
    return {"probed": probed}


def _run_scan(runner, item: WorkItem) -> dict[str, Any]:
    from loupe.pipeline.scan import ScanOptions, Scanner, scan_dataset

    spec: ScanSpec = item.spec
    shard = listing_rows(runner, spec.listing, spec.start, spec.stop)
    options = ScanOptions(k=spec.k, pooled=spec.pooled, chunk_images=spec.chunk_images)
    key = (spec.layers, spec.basis_digests, options)
    if getattr(runner, "_scanner_key", None) != key:
        bases = {layer: runner.basis(layer, digest) for layer, digest in zip(spec.layers, spec.basis_digests) if digest}
        runner._scanner = Scanner(runner.model, list(spec.layers), options, receptive_fields=receptive_fields(runner),
                                  bases=bases)
        runner._scanner_key = key
    context = runner.scan_context or {}
    model_id = runner.config.id
    with runner.writer.item(item.key, item_meta(item)) as out:
        def write_chunk(chunk) -> None:
            out.write_activations(model_id, chunk.layer, chunk.start, **{chunk.kind: chunk.values})

        result = scan_dataset(
            runner.model, shard, runner._scanner,
            loader=LoaderOptions(images_per_batch=spec.images_per_batch, workers=spec.decode_workers,
                                 decode=spec.decode),
            storage_options=context.get("dataset_storage_options"),
            on_chunk=write_chunk if spec.pooled else None,
        )
        for index, layer in enumerate(spec.layers):
            write_partial_arrays(out, partial_name(index), result.layer_only(layer).state())
    return {"images": result.scanned, "skipped": len(result.skipped)}


def _run_reduce(runner, item: WorkItem) -> dict[str, Any]:
    from loupe.jobs.build.examples_stage import write_layer_examples

    spec: ReduceSpec = item.spec
    merged = reduce_layer(runner.writer, list(spec.scan_items), spec.layer, spec.layer_index)
    model_id = runner.config.id
    skipped = [{"image_id": s.image_id, "reason": s.reason} for s in merged.skipped]
    with runner.writer.item(item.key, {"stage": "reduce", "skipped_images": len(skipped),
                                       "skipped_examples": skipped[:100]}) as out:
        examples = merged.examples_table().drop_columns(["model"])
        if spec.examples:
            examples = write_layer_examples(runner, spec, merged, out)
        out.write_units(model_id, spec.layer, unit_facts(merged.units_table().drop_columns(["model"]),
                                                          spec.layer, runner.model))
        out.write_examples(model_id, spec.layer, examples)
        if spec.write_images:
            out.write_images(_listing(runner, spec.listing).images_table())
    return {"images": 0, "skipped": len(skipped)}


def unit_facts(units: pa.Table, layer: str, model) -> pa.Table:
    """Add `dead` (never positive, or constant, over the dataset) and, for the logits, class `label`s."""
    high = units.column("max_max").to_numpy(zero_copy_only=False)
    low = units.column("max_min").to_numpy(zero_copy_only=False)
    seen = units.column("images").to_numpy(zero_copy_only=False) > 0
    with np.errstate(invalid="ignore"):
        dead = seen & ((high <= 0) | (high == low))
    units = units.append_column("dead", pa.array(dead))
    categories = getattr(model, "categories", None)
    if layer == LOGITS and categories:
        index = units.column("unit").to_numpy(zero_copy_only=False)
        labels = [categories[i] if 0 <= i < len(categories) else None for i in index.tolist()]
        units = units.append_column("label", pa.array(labels, pa.string()))
    return units


def reduce_layer(writer: AtlasWriter, keys: list[str], layer: str, layer_index: int):
    """Fold one layer's partials of the scan items `keys` (in order) into one single-layer ScanResult.

    Each partial is read, verified, merged into the running result and dropped before the next
    is read: peak memory is one merged layer plus one shard's layer.
    """
    from loupe.pipeline.scan import ScanResult, merge_results

    name = partial_name(layer_index)

    def load(key: str) -> ScanResult:
        url = partial_url(writer, key, name)
        try:
            result = ScanResult.from_state(read_partial_arrays(writer, key, name))
        except LoupeError as exc:
            raise StorageError(f"scan partial {url} of work item {key} is malformed: {exc}", url=url) from None
        if list(result.layers) != [layer]:
            raise StorageError(f"scan partial {url} of work item {key} holds layers {list(result.layers)}, "
                               f"expected only {layer!r}", url=url)
        return result

    return merge_results(load(key) for key in keys)
