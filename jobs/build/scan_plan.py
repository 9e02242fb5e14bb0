"""Scan work items on the driver: list the dataset once, one item per chunk-aligned shard, and
one reduce per (model, layer); declare the pooled-activation arrays the shards write into."""

from __future__ import annotations

from typing import Any

from loupe.jobs.build.config import ScanConfig
from loupe.jobs.build.examples_stage import slot_counts
from loupe.jobs.build.plan import FieldsSpec, ReduceSpec, ScanSpec, WorkItem, make_item, model_identity
from loupe.jobs.build.resolve import ResolvedModel
from loupe.jobs.build.shared_state import receptive_fields_key, save_listing
from loupe.pipeline.data import Listing, list_images
from loupe.storage import AtlasWriter, plan_image_chunks


def list_dataset(scan: ScanConfig) -> Listing:
    """List the dataset once on the driver (errors name the URL, before any compute)."""
    dataset = scan.dataset
    return list_images(dataset.url, storage_options=dataset.storage_options, format=dataset.format,
                       image_column=dataset.image_column, id_column=dataset.id_column)


def scan_context(scan: ScanConfig | None, listing: Listing | None) -> dict[str, Any] | None:
    if scan is None or listing is None:
        return None
    return {"dataset_storage_options": scan.dataset.storage_options, "listing_fingerprint": listing.fingerprint}


def scanned_layers(model: ResolvedModel) -> list[str]:
    """Layer keys scanned: each layer's channels and bases, all from one forward per batch."""
    return [layer.key for layer in model.layers]


def plan_scan(model: ResolvedModel, scan: ScanConfig, listing: Listing, *, write_images: bool) -> list[WorkItem]:
    """The fields item, one item per shard (chunk-aligned image range), then one reduce item per layer.

    Exactly one reduce (the first layer's of the model given `write_images`) also writes the
    dataset's images table (id -> URI).
    """
    per_chunk, ranges = plan_image_chunks(len(listing), min(scan.shards, len(listing)))
    identity = model_identity(model)
    state_key, probed = receptive_fields_key(model)
    fields = make_item(model.id, {}, FieldsSpec(state_key, probed), cost=0)
    layers = tuple(scanned_layers(model))
    digests = tuple(layer.basis_digest for layer in model.layers)
    items = [
        make_item(model.id, identity, ScanSpec(
            layers=layers, k=scan.k, listing=listing.fingerprint, chunk_images=per_chunk,
            pooled=scan.pooled_activations, shard_index=index, shard_count=len(ranges), start=start, stop=stop,
            images_per_batch=scan.images_per_batch, decode_workers=scan.decode_workers,
            basis_digests=digests if any(digests) else (), fields_item=fields.key, decode=scan.decode,
        ), cost=stop - start)
        for index, (start, stop) in enumerate(ranges)
    ]
    scan_keys = tuple(i.key for i in items)
    examples = scan.examples
    reduces = [
        make_item(model.id, identity, ReduceSpec(
            layer=layer, layer_index=index, scan_items=scan_keys, listing=listing.fingerprint,
            write_images=write_images and index == 0, examples=examples.enabled,
            example_size=examples.example_size, heatmap_size=examples.heatmap_size,
            quantiles=tuple(examples.quantiles), samples_per_band=examples.samples_per_band,
            histogram_bins=examples.histogram_bins, seed=examples.seed, units_per_item=examples.units_per_item,
            images_per_batch=scan.images_per_batch, decode_workers=scan.decode_workers,
            basis_digest=digests[index], fields_item=fields.key, decode=scan.decode,
        ), cost=0)
        for index, layer in enumerate(layers)
    ]
    return [fields, *items, *reduces]



def declare_scan_arrays(writer: AtlasWriter, model: ResolvedModel, scan: ScanConfig, listing: Listing) -> None:
    """Declare pooled-activation arrays (images x channels, chunked like the shards) and save the listing."""
    save_listing(writer, listing)
    if not scan.pooled_activations:
        return
    per_chunk, _ = plan_image_chunks(len(listing), min(scan.shards, len(listing)))
    for layer in model.layers:
        writer.declare_activations(model.id, layer.key, n_images=len(listing),
                                   n_channels=layer.width, images_per_chunk=per_chunk)
        if not scan.examples.enabled:
            continue
        examples = scan.examples
        for kind, slots in slot_counts(scan.k, len(examples.quantiles) - 1, examples.samples_per_band).items():
            writer.declare_examples(model.id, layer.key, kind, n_units=layer.width, slots=slots,
                                    example_size=scan.examples.example_size,
                                    heatmap_size=scan.examples.heatmap_size,
                                    units_per_shard=scan.examples.units_per_item)
