"""Scan and reduce items on a worker: a scan item streams its shard's pooled activations straight
into the atlas (each shard owns its chunks) and saves its mergeable result as an npz partial
(`ScanResult.state()`); the reduce item merges every shard's partial into the per-unit statistics
and top/bottom examples tables."""

from __future__ import annotations

from typing import Any

from loupe.jobs.build.plan import ReduceSpec, ScanSpec, WorkItem, item_meta
from loupe.jobs.build.shared_state import load_listing, load_receptive_fields
from loupe.pipeline.data import Listing, LoaderOptions
from loupe.pipeline.errors import LoupeError
from loupe.storage import AtlasWriter, StorageError
from loupe.storage.build_state import BuildState, partial_url, read_partial_arrays, write_partial_arrays

PARTIAL = "scan-result.npz"


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


def _receptive_fields(runner) -> dict | None:
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
            loader=LoaderOptions(images_per_batch=spec.images_per_batch, workers=spec.decode_workers),
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
