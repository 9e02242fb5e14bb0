"""The pictures of a layer's unit pages, made inside the layer's reduce item on a worker.

After the partials are merged, the reduce knows every unit's top-k and bottom-k images. One
streamed read of the layer's pooled per-image maxima (written by the scan shards) then draws each
unit's quantile-band samples and its histogram. Only the images these examples name are decoded,
each once, in listing order; one forward pass per batch of them gives every needed unit's map,
and each example is cut into a picture and a heat map. Pictures are staged on local disk (a
memory map) and written one storage shard of units at a time, so memory stays bounded by a
batch, not by the layer's units or the dataset.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from loupe.jobs.build.plan import ReduceSpec
from loupe.pipeline.scan.result import LayerResult, ScanResult
from loupe.storage import StorageError, layout
from loupe.storage.item_writer import ItemWriter
from loupe.storage.layout import split_layer_key

#: Needed images decoded and cut per step (bounded memory; each image is read once).
IMAGES_PER_STEP = 256
#: Listing rows read at a time while looking up ranks and locations of needed images.
LISTING_WINDOW = 65_536
EXAMPLE_KINDS = ("top", "bottom", "samples")


def slot_counts(k: int, bands: int, samples_per_band: int) -> dict[str, int]:
    """Pictures stored per unit for each kind of example."""
    return {"top": k, "bottom": k, "samples": bands * samples_per_band}


@dataclass(frozen=True)
class Slots:
    """Where each example picture goes: flat arrays over every (kind, unit, slot) that is filled."""

    kind: np.ndarray  # int8 index into EXAMPLE_KINDS
    unit: np.ndarray  # int64
    slot: np.ndarray  # int64
    image_index: np.ndarray  # int64 global listing position
    position: np.ndarray  # int64 flattened position of the max, or -1: find it


def example_slots(layer: LayerResult, samples, samples_per_band: int) -> Slots:
    """Every filled top/bottom slot and every band sample of one layer (sample slot = band * per band + slot)."""
    parts = []
    for code, part in ((0, layer.top), (1, layer.bottom)):
        unit, rank = np.nonzero(part.filled())
        parts.append((np.full(len(unit), code), unit, rank, part.image_index[unit, rank], part.position[unit, rank]))
    sample_slot = samples.band.astype(np.int64) * samples_per_band + samples.slot.astype(np.int64)
    parts.append((np.full(len(samples.unit), 2), samples.unit.astype(np.int64), sample_slot,
                  samples.image_index.astype(np.int64), np.full(len(samples.unit), -1)))
    return Slots(*(np.concatenate([np.asarray(p[i], dtype=np.int64) for p in parts]) for i in range(5)))


def band_samples(runner, spec: ReduceSpec, merged: ScanResult):
    """One streamed read of the layer's pooled maxima: band samples and histogram of every unit."""
    from loupe.jobs.build.scan_stage import listing_rows
    from loupe.pipeline.scan import BandSampler, ValueHistogram, band_thresholds

    layer = merged.layers[spec.layer]
    model_id = runner.config.id
    dtype = _pooled_dtype(runner, model_id, spec.layer)
    low = layer.bottom.values(bottom=True)[:, 0].astype(dtype).astype(np.float64)
    high = layer.top.values(bottom=False)[:, 0].astype(dtype).astype(np.float64)
    quantiles = layer.quantiles(spec.quantiles, low, high)
    thresholds = band_thresholds(quantiles, low, high)
    sampler = BandSampler(thresholds, spec.samples_per_band, spec.seed)
    histogram = ValueHistogram(low, high, spec.histogram_bins)
    total = listing_total(merged)
    window: tuple[int, int, np.ndarray] | None = None
    for start, values in runner.writer.read_activation_chunks(model_id, spec.layer, "max", list(spec.scan_items)):
        stop = start + len(values)
        if window is None or not (window[0] <= start and stop <= window[1]):
            # Ranks of a whole window of rows at once: chunks are far smaller than listing blocks.
            window_stop = min(max(stop, start + LISTING_WINDOW), total)
            window = (start, window_stop, listing_rows(runner, spec.listing, start, window_stop).keys)
        ranks = window[2][start - window[0]:stop - window[0]]
        values = np.asarray(values, dtype=np.float64)
        sampler.add(values, np.arange(start, stop, dtype=np.int64), ranks)
        histogram.add(values)
    return sampler.result(), histogram


def listing_total(merged: ScanResult) -> int:
    """Images in the listing: the merged shards cover all of it."""
    return max((stop for _, stop in merged.ranges), default=0)


def _pooled_dtype(runner, model_id: str, layer: str) -> np.dtype:
    meta = json.loads(runner.writer.array_metadata(layout.activation_array(model_id, layer, "max")))
    return np.dtype(meta["data_type"])


class PictureStage:
    """Local-disk staging of one layer's example pictures and heat maps, then shard-by-shard writes."""

    def __init__(self, directory: str, units: int, slots: dict[str, int], size: int, heatmap_size: int) -> None:
        self.slots = slots
        self.pixels = {}
        self.heatmaps = {}
        for kind, count in slots.items():
            self.pixels[kind] = np.lib.format.open_memmap(
                Path(directory) / f"{kind}.pixels.npy", mode="w+", dtype=np.uint8, shape=(units, count, size, size, 3))
            self.heatmaps[kind] = np.lib.format.open_memmap(
                Path(directory) / f"{kind}.heatmaps.npy", mode="w+", dtype=np.float16,
                shape=(units, count, heatmap_size, heatmap_size))
            self.heatmaps[kind][:] = np.nan

    def put(self, kind: str, unit: np.ndarray, slot: np.ndarray, pixels: np.ndarray, heatmaps: np.ndarray) -> None:
        self.pixels[kind][unit, slot] = pixels
        self.heatmaps[kind][unit, slot] = heatmaps

    def write(self, out: ItemWriter, model: str, layer: str, units_per_shard: int) -> None:
        for kind in self.slots:
            total = self.pixels[kind].shape[0]
            for start in range(0, total, units_per_shard):
                stop = min(start + units_per_shard, total)
                out.write_example_pictures(model, layer, kind, list(range(start, stop)),
                                           np.ascontiguousarray(self.pixels[kind][start:stop]),
                                           np.ascontiguousarray(self.heatmaps[kind][start:stop]))


@dataclass
class CutRecords:
    """Per example slot (same order as `Slots`): boxes in both frames, the image size, value, position."""

    field_box: np.ndarray
    input_box: np.ndarray
    image_box: np.ndarray
    image_size: np.ndarray
    position: np.ndarray
    value: np.ndarray
    image_id: np.ndarray  # object

    @classmethod
    def empty(cls, n: int) -> "CutRecords":
        return cls(np.zeros((n, 4), np.int32), np.zeros((n, 4), np.int32), np.zeros((n, 4), np.float64),
                   np.zeros((n, 2), np.int64), np.full(n, -1, np.int64), np.full(n, np.nan, np.float32),
                   np.empty(n, dtype=object))


def cut_examples(runner, spec: ReduceSpec, slots: Slots, stage: PictureStage, total: int) -> CutRecords:
    """Decode each needed image once (in listing order), cut every example of it, stage the pictures."""
    from loupe.jobs.build.scan_stage import listing_rows, receptive_fields
    from loupe.pipeline.data.loader import read_images
    from loupe.pipeline.scan import PictureCutter, PictureRequests, PictureSettings

    model = runner.model
    fields = receptive_fields(runner)
    layer = split_layer_key(spec.layer)[0]
    if not fields or layer not in fields:
        raise StorageError(f"receptive field of layer {layer} was not saved for this build; "
                           "example pictures need it", url=runner.writer.url)
    preprocessing = model.preprocessing
    cutter = PictureCutter(model, layer, fields[layer], PictureSettings(spec.example_size, spec.heatmap_size),
                           spec.images_per_batch, basis=runner.basis(spec.layer, spec.basis_digest))
    records = CutRecords.empty(len(slots.unit))
    order = np.argsort(slots.image_index, kind="stable")
    needed = np.unique(slots.image_index)
    storage_options = (runner.scan_context or {}).get("dataset_storage_options")
    position = 0
    while position < len(needed):
        first = int(needed[position])
        window_stop = min(first + LISTING_WINDOW, total)
        in_window = needed[(needed >= first) & (needed < window_stop)]
        listing = listing_rows(runner, spec.listing, first, window_stop)
        for step in range(0, len(in_window), IMAGES_PER_STEP):
            images = in_window[step:step + IMAGES_PER_STEP]
            decoded = read_images(listing, images - first, preprocessing.input_size, preprocessing.resize_size,
                                  storage_options, decode=spec.decode, device=model.device)
            if decoded.skipped:
                bad = decoded.skipped[0]
                raise StorageError(f"image {bad.image_id} (listing position {bad.position}) was scanned but cannot be "
                                   f"read again for its example pictures: {bad.reason}", url=runner.writer.url)
            lo = np.searchsorted(slots.image_index[order], images[0], side="left")
            hi = np.searchsorted(slots.image_index[order], images[-1], side="right")
            chosen = order[lo:hi]
            pictures = cutter.cut(decoded, PictureRequests(slots.image_index[chosen], slots.unit[chosen],
                                                           slots.position[chosen]))
            for code, kind in enumerate(EXAMPLE_KINDS):
                mask = slots.kind[chosen] == code
                if mask.any():
                    stage.put(kind, slots.unit[chosen][mask], slots.slot[chosen][mask],
                              pictures.pixels[mask], pictures.heatmaps[mask])
            records.field_box[chosen] = pictures.field_box
            records.input_box[chosen] = pictures.input_box
            records.image_box[chosen] = pictures.image_box
            records.image_size[chosen] = pictures.image_size
            records.position[chosen] = pictures.position
            records.value[chosen] = pictures.value
            ids = dict(zip(decoded.positions.tolist(), listing.ids(decoded.positions - first)))
            records.image_id[chosen] = [ids[int(i)] for i in slots.image_index[chosen]]
        position += len(in_window)
    return records


def box_columns(prefix: str, boxes: np.ndarray, dtype) -> dict[str, pa.Array]:
    return {f"{prefix}_{name}": pa.array(boxes[:, i].astype(dtype)) for i, name in enumerate(("y0", "x0", "y1", "x1"))}


def write_layer_examples(runner, spec: ReduceSpec, merged: ScanResult, out: ItemWriter) -> pa.Table:
    """Band samples, histograms and every example's picture for one layer; returns the examples table
    with crop boxes in both frames (the caller writes it with the units table)."""
    model_id = runner.config.id
    layer = merged.layers[spec.layer]
    samples, histogram = band_samples(runner, spec, merged)
    slots = example_slots(layer, samples, spec.samples_per_band)
    counts = slot_counts(merged.k, len(spec.quantiles) - 1, spec.samples_per_band)
    with tempfile.TemporaryDirectory(prefix="loupe-examples-") as directory:
        stage = PictureStage(directory, layer.channels, counts, spec.example_size, spec.heatmap_size)
        records = cut_examples(runner, spec, slots, stage, listing_total(merged))
        stage.write(out, model_id, spec.layer, spec.units_per_item)
        del stage
    is_sample = slots.kind == 2
    sample_table = samples.to_table()
    sample_rows = np.flatnonzero(is_sample)
    sample_table = _with_columns(sample_table, {
        "picture": pa.array((sample_table.column("band").to_numpy().astype(np.int64) * spec.samples_per_band
                             + sample_table.column("slot").to_numpy()).astype(np.int32)),
        "image_id": pa.array(records.image_id[sample_rows].tolist(), pa.string()),
        "position": pa.array(records.position[sample_rows]),
        "activation": pa.array(records.value[sample_rows]),
        **_frame_columns(records, sample_rows),
    })
    out.write_samples(model_id, spec.layer, sample_table)
    out.write_histograms(model_id, spec.layer, histogram.to_table())
    return _examples_table(merged, slots, records)


def _frame_columns(records: CutRecords, rows: np.ndarray) -> dict[str, pa.Array]:
    return {
        **box_columns("field", records.field_box[rows], np.int32),
        **box_columns("crop_input", records.input_box[rows], np.int32),
        **box_columns("crop_image", records.image_box[rows], np.float64),
        "image_height": pa.array(records.image_size[rows, 0]),
        "image_width": pa.array(records.image_size[rows, 1]),
    }


def _with_columns(table: pa.Table, columns: dict[str, pa.Array]) -> pa.Table:
    for name, values in columns.items():
        table = table.append_column(name, values)
    return table


def _examples_table(merged: ScanResult, slots: Slots, records: CutRecords) -> pa.Table:
    """The layer's examples table (unit, kind, rank, ...) with the pictures' crop boxes in both frames."""
    table = merged.examples_table().drop_columns(["model"])
    rows = np.flatnonzero(slots.kind < 2)
    kinds = np.where(slots.kind[rows] == 0, "top", "bottom")
    index = {(str(k), int(u), int(r)): i for i, (k, u, r) in enumerate(zip(kinds, slots.unit[rows], slots.slot[rows]))}
    take = [rows[index[(k, u, r)]] for k, u, r in zip(table.column("kind").to_pylist(), table.column("unit").to_pylist(),
                                                       table.column("rank").to_pylist())]
    return _with_columns(table, {k: v for k, v in _frame_columns(records, np.asarray(take, dtype=np.int64)).items()
                                 if not k.startswith("field_")})
