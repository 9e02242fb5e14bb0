"""Scan work items: list the dataset once, one item per chunk-aligned shard, one reduce per model.

A scan item streams its shard's pooled activations straight into the atlas (each shard owns its
chunks) and saves its mergeable result as a partial; the reduce item merges every shard's partial
into the per-unit statistics and top/bottom examples tables.
"""

from __future__ import annotations

import pickle
from typing import Any

from loupe.jobs.config import ScanConfig
from loupe.jobs.plan import WorkItem, content_key, model_identity
from loupe.jobs.resolve import ResolvedModel
from loupe.pipeline.data import Listing, LoaderOptions, list_images
from loupe.storage import AtlasWriter, plan_image_chunks

PARTIAL = "scan-result.pickle"
LISTINGS = "build-state/listings"
FIELDS = "build-state/receptive-fields"


def list_dataset(scan: ScanConfig) -> Listing:
    """List the dataset once on the driver (errors name the URL, before any compute)."""
    dataset = scan.dataset
    return list_images(dataset.url, storage_options=dataset.storage_options, format=dataset.format,
                       image_column=dataset.image_column, id_column=dataset.id_column)


def listing_url(atlas_url: str, fingerprint: str) -> str:
    """Where a build saves its dataset listing, keyed by the listing's fingerprint."""
    return f"{atlas_url.rstrip('/')}/{LISTINGS}/{fingerprint}.parquet"


def scan_context(scan: ScanConfig | None, listing: Listing | None) -> dict[str, Any] | None:
    if scan is None or listing is None:
        return None
    return {"dataset_storage_options": scan.dataset.storage_options, "listing_fingerprint": listing.fingerprint}


def save_receptive_fields(writer: AtlasWriter, model: ResolvedModel) -> str:
    """Probe the exact crop boxes of every scanned layer once and save them for the scan workers.

    They depend only on the architecture and input size, so the file is keyed by those and reused
    by later builds.
    """
    import hashlib
    import json

    import fsspec

    from loupe.pipeline.scan import probe_receptive_fields

    layers = scanned_layers(model)
    identity = json.dumps({"source": model.config.source, "kwargs": model.config.model_kwargs,
                           "input_size": model.model.preprocessing.input_size, "layers": layers}, sort_keys=True)
    url = f"{writer.url.rstrip('/')}/{FIELDS}/{hashlib.sha256(identity.encode()).hexdigest()[:32]}.pickle"
    fs, path = fsspec.core.url_to_fs(url, **writer_options(writer))
    if not fs.exists(path):
        fields = probe_receptive_fields(model.model, layers)
        fs.makedirs(fs._parent(path), exist_ok=True)
        fs.pipe_file(path, pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL))
    return url


def _receptive_fields(runner) -> dict | None:
    url = (runner.scan_context or {}).get("receptive_fields_url")
    if not url:
        return None
    import fsspec

    with fsspec.open(url, "rb", **writer_options(runner.writer)) as handle:
        return pickle.loads(handle.read())


def scanned_layers(model: ResolvedModel) -> list[str]:
    return [layer.info.name for layer in model.layers]


def plan_scan(model: ResolvedModel, scan: ScanConfig, listing: Listing, *, write_images: bool) -> list[WorkItem]:
    """One item per shard (chunk-aligned image range), then the model's reduce item.

    Exactly one model's reduce (`write_images`) also writes the dataset's images table (id -> URI).
    """
    per_chunk, ranges = plan_image_chunks(len(listing), min(scan.shards, len(listing)))
    identity = model_identity(model)
    layers = scanned_layers(model)
    common = {"layers": layers, "k": scan.k, "listing": listing.fingerprint, "chunk_images": per_chunk,
              "pooled": scan.pooled_activations}
    items = []
    for index, (start, stop) in enumerate(ranges):
        spec = {**common, "shard_index": index, "shard_count": len(ranges), "start": start, "stop": stop,
                "batch_size": scan.batch_size, "decode_workers": scan.decode_workers}
        key_fields = {k: v for k, v in spec.items() if k not in ("batch_size", "decode_workers")}
        items.append(WorkItem(content_key("scan", {**identity, **key_fields}), "scan", model.id, spec, cost=stop - start))
    reduce_spec = {"layers": layers, "scan_items": [i.key for i in items], "listing": listing.fingerprint,
                   "write_images": write_images}
    items.append(WorkItem(content_key("reduce", {**identity, **reduce_spec}), "reduce", model.id, reduce_spec, cost=0))
    return items


def declare_scan_arrays(writer: AtlasWriter, model: ResolvedModel, scan: ScanConfig, listing: Listing) -> None:
    """Declare pooled-activation arrays (images x channels, chunked like the shards) and save the listing."""
    import fsspec

    url = listing_url(writer.url, listing.fingerprint)
    fs, path = fsspec.core.url_to_fs(url, **writer_options(writer))
    if not fs.exists(path):  # saved once, shared by every worker and later builds
        listing.save(url, storage_options=writer_options(writer))
    if not scan.pooled_activations:
        return
    per_chunk, _ = plan_image_chunks(len(listing), min(scan.shards, len(listing)))
    for layer in model.layers:
        writer.declare_activations(model.id, layer.info.name, n_images=len(listing),
                                   n_channels=layer.info.channels, images_per_chunk=per_chunk)


def writer_options(writer: AtlasWriter) -> dict[str, Any]:
    return dict(writer.store.location.options or {})


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
        cached = Listing.load(listing_url(runner.writer.url, fingerprint), storage_options=writer_options(runner.writer))
        runner._listing = cached
    return cached


def _run_scan(runner, item: WorkItem) -> dict[str, Any]:
    from loupe.pipeline.scan import ScanOptions, Scanner, scan_dataset

    spec = item.spec
    shard = _listing(runner, spec["listing"]).slice(spec["start"], spec["stop"])
    options = ScanOptions(k=spec["k"], pooled=spec["pooled"], chunk_images=spec["chunk_images"])
    key = (tuple(spec["layers"]), options)
    if getattr(runner, "_scanner_key", None) != key:
        runner._scanner = Scanner(runner.model, spec["layers"], options, receptive_fields=_receptive_fields(runner))
        runner._scanner_key = key
    context = runner.scan_context or {}
    model_id = runner.config.id
    with runner.writer.item(item.key, {"stage": "scan", **{k: v for k, v in spec.items() if k != "layers"}}) as out:
        def write_chunk(chunk) -> None:
            out.write_activations(model_id, chunk.layer, chunk.start, **{chunk.kind: chunk.values})

        result = scan_dataset(
            runner.model, shard, runner._scanner,
            loader=LoaderOptions(batch_size=spec["batch_size"], workers=spec["decode_workers"]),
            storage_options=context.get("dataset_storage_options"),
            on_chunk=write_chunk if spec["pooled"] else None,
        )
        out.write_partial(PARTIAL, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    return {"images": result.scanned, "skipped": len(result.skipped)}


def _run_reduce(runner, item: WorkItem) -> dict[str, Any]:
    from loupe.pipeline.scan import merge_results

    spec = item.spec
    partials = [pickle.loads(runner.writer.read_partial(key, PARTIAL)) for key in spec["scan_items"]]
    merged = merge_results(partials)
    model_id = runner.config.id
    units, examples = merged.units_table().drop_columns(["model"]), merged.examples_table().drop_columns(["model"])
    skipped = [{"image_id": s.image_id, "reason": s.reason} for s in merged.skipped]
    with runner.writer.item(item.key, {"stage": "reduce", "skipped_images": len(skipped),
                                       "skipped_examples": skipped[:100]}) as out:
        for layer in spec["layers"]:
            out.write_units(model_id, layer, units.filter(_column_equals(units, "layer", layer)))
            out.write_examples(model_id, layer, examples.filter(_column_equals(examples, "layer", layer)))
        if spec["write_images"]:
            out.write_images(_listing(runner, spec["listing"]).images_table())
    return {"images": 0, "skipped": len(skipped)}


def _column_equals(table, column: str, value: str):
    import pyarrow.compute as pc

    return pc.equal(table.column(column), value)
