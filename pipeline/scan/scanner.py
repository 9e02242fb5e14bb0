"""The scan itself: one forward per batch, every requested layer reduced on the fly, on the device.

    scanner = Scanner(model, ["features.10", "features.14"], ScanOptions(k=16))
    result = scanner.scan(iter_batches(shard, 224, 256), shard, on_chunk=sink)

Activations are never kept: `capture(..., on_output=...)` hands each layer's output to the
scanner while the forward pass is running (pre-ReLU values, as the module returned them) and the
pass stops after the deepest requested layer. Each layer is reduced to a few numbers per image
and unit; one vectorized update per batch folds them into the running state of every unit.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from loupe.pipeline.data.listing import Listing
from loupe.pipeline.data.loader import Batch, SkippedImage
from loupe.pipeline.errors import LoupeError
from loupe.pipeline.models import capture
from loupe.pipeline.scan.accumulate import UnitAccumulator, UnitTotals
from loupe.pipeline.scan.batch_pass import BatchPass, Tally
from loupe.pipeline.scan.chunks import POOLINGS, SPATIAL, ChunkSink, ChunkStream
from loupe.pipeline.scan.layout import positions_count
from loupe.pipeline.scan.receptive_field import ReceptiveField, probe_receptive_fields
from loupe.pipeline.scan.result import Examples, LayerResult, ScanResult

if TYPE_CHECKING:
    from loupe.pipeline.models import LayerInfo, LoadedModel
    from loupe.pipeline.models.basis import Basis

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class ScanError(LoupeError):
    """A scan request is invalid (bad k, unknown layer, bad option); raised before any work."""


@dataclass(frozen=True)
class ScanOptions:
    """What to keep per unit and which activation tensors to stream out.

    `pooled`: stream per-image spatial max and mean (images x channels) of every layer.
    `spatial_layers`: also stream the full maps of these layers (large: ask only for a few).
    `chunk_images`: rows per streamed chunk; chunk boundaries are multiples of it in listing
    positions, so shards aligned to it (Listing.shard(..., align=chunk_images)) never share one.
    `position_search`: how the (y, x) of each max is found: "all" images in one fused pass,
    only "candidates" that can enter a top/bottom-k, or "auto" (candidates on CPU, all on GPU).
    Results are identical; only speed differs.
    """

    k: int = 16
    pooled: bool = True
    activation_dtype: str = "float16"
    chunk_images: int = 1024
    spatial_layers: tuple[str, ...] = ()
    spatial_chunk_images: int = 64
    position_search: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "spatial_layers", tuple(self.spatial_layers))
        for name in ("k", "chunk_images", "spatial_chunk_images"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ScanError(f"scan.{name} must be a positive integer, got {value!r}")
        if self.position_search not in ("auto", "all", "candidates"):
            raise ScanError(f"scan.position_search must be auto, all or candidates, got {self.position_search!r}")
        if self.activation_dtype not in _DTYPES:
            raise ScanError(f"scan.activation_dtype must be one of {sorted(_DTYPES)}, got {self.activation_dtype!r}")


@dataclass
class ScanProgress:
    """Reported after every batch: listing positions done so far, images scanned and skipped."""

    done: int
    total: int
    scanned: int
    skipped: int
    seconds: float
    last_skipped: list[SkippedImage] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


_FIELD_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


class Scanner:
    """Scans batches of one model's inputs for a fixed set of layers; reusable across shards."""

    def __init__(
        self,
        model: "LoadedModel",
        layers: Sequence[str],
        options: ScanOptions = ScanOptions(),
        *,
        receptive_fields: Mapping[str, ReceptiveField] | None = None,
        bases: Mapping[str, "Basis"] | None = None,
    ) -> None:
        """`receptive_fields` (e.g. probed once on a driver and shipped to every worker) skips the probe.

        `bases` maps a scanned name to a `Basis` (directions or an SAE encoder): that name's units
        are the basis's units, computed on the fly from the activation of the basis's layer
        (nothing dense is stored). A name may be the basis's layer itself (the layer is scanned in
        that basis only) or any other name, e.g. `features.7@sae`, scanned beside the layer's
        channels from the same forward pass; names in `bases` missing from `layers` are appended.
        """
        if isinstance(layers, str):
            layers = [name for name in layers.split(",") if name]
        self.bases = dict(bases or {})
        layers = list(dict.fromkeys([*layers, *self.bases]))
        if not layers:
            raise ScanError("scan needs at least one layer")
        self.model = model
        self.options = options
        #: The model layer each scanned name reads (its own name, or its basis's layer).
        self.sources = {name: self.bases[name].layer if name in self.bases else name for name in layers}
        self.infos: list[LayerInfo] = [model.catalog[self.sources[name]] for name in layers]  # LayerError names it
        for name in options.spatial_layers:
            if name not in layers:
                raise ScanError(f"scan.spatial_layers names {name!r}, which is not among the scanned layers {layers}")
        self.layers = layers
        for name, basis in self.bases.items():
            basis.check_layer(model.catalog[basis.layer].channels)
            if name in options.spatial_layers:
                raise ScanError(f"scan.spatial_layers cannot stream full maps of {name!r}: it is scanned in a basis")
        self.widths = {name: self.bases[name].units if name in self.bases else info.channels
                       for name, info in zip(layers, self.infos)}
        self.offsets: list[tuple[str, int, int]] = []
        total = 0
        for name in layers:
            self.offsets.append((name, total, total + self.widths[name]))
            total += self.widths[name]
        self.units = total
        size = model.preprocessing.input_size
        self._given: dict[str, ReceptiveField] = {}
        for info in self.infos:
            field = (receptive_fields or {}).get(info.name)
            if field is None:
                continue
            if field.input_size != (size, size) or field.boxes.shape[1] != positions_count(tuple(info.spatial)):
                raise ScanError(
                    f"receptive field given for {info.name} was probed for another input size or layer shape "
                    f"({field.input_size}, {field.boxes.shape[1]} positions; the model takes {size}px)"
                )
            self._given[info.name] = field

    # ---- receptive fields ------------------------------------------------------------------
    @property
    def receptive_fields(self) -> dict[str, ReceptiveField]:
        """Exact crop boxes per layer: given ones, else probed once per model and input size and cached."""
        size = self.model.preprocessing.input_size
        cache = _FIELD_CACHE.setdefault(self.model.module, {})
        missing = list(dict.fromkeys(info.name for info in self.infos
                                     if info.name not in self._given and (info.name, size) not in cache))
        if missing:
            probed = probe_receptive_fields(self.model, missing)
            for name, value in probed.items():
                cache[(name, size)] = value
        return {info.name: self._given.get(info.name) or cache[(info.name, size)] for info in self.infos}

    # ---- the scan --------------------------------------------------------------------------
    def scan(
        self,
        batches: Iterable[Batch],
        listing: Listing,
        *,
        on_chunk: ChunkSink | None = None,
        on_progress: Callable[[ScanProgress], None] | None = None,
        pad_to: int | None = None,
    ) -> ScanResult:
        """Scan `batches` (which must cover `listing` in order) and return the shard's result.

        Pooled (and requested spatial) activations go to `on_chunk` chunk by chunk; without a
        sink they are not computed. `pad_to` (the loader's batch size) pads short batches with
        blank images so every forward has the same shape: backends pick kernels by shape, and a
        fixed shape keeps each image's activations bit-identical however shards and skipped
        images fall, so shard results merge into exactly the single-pass result.
        """
        fields = self.receptive_fields
        run = self._pass(listing, on_chunk)
        tally = Tally(listing.start)
        with capture(self.model, list(dict.fromkeys(self.sources.values())), on_output=run.on_output) as cap, torch.inference_mode():
            for batch in batches:
                self._check_batch(batch, tally.done, listing)
                run.run(cap, batch, self.model.device, pad_to)
                tally.count(batch)
                if on_progress is not None:
                    on_progress(ScanProgress(tally.done - listing.start, len(listing), tally.scanned,
                                             len(tally.skipped), tally.seconds, list(batch.skipped)))
        if tally.done != listing.stop:
            raise ScanError(f"batches ended at listing position {tally.done}, expected {listing.stop}")
        return self._result(run.finish(), fields, listing, tally.scanned, tally.skipped)

    def _pass(self, listing: Listing, sink: ChunkSink | None) -> BatchPass:
        device = self.model.device
        lazy = self.options.position_search == "candidates" or (
            self.options.position_search == "auto" and device.type == "cpu"
        )
        pooled, spatial = self._streams(listing, sink)
        return BatchPass(self.sources, self.infos, self.offsets, UnitAccumulator(self.units, self.options.k, device), pooled,
                         spatial, lazy_positions=lazy, map_dtype=_DTYPES[self.options.activation_dtype],
                         bases=self.bases)

    def _check_batch(self, batch: Batch, done: int, listing: Listing) -> None:
        if batch.start != done or batch.stop > listing.stop:
            raise ScanError(
                f"batch covers listing positions [{batch.start}, {batch.stop}) but the scan expected the next batch "
                f"to start at {done} (listing [{listing.start}, {listing.stop}))"
            )

    def _streams(self, listing: Listing, sink: ChunkSink | None) -> tuple[ChunkStream | None, dict[str, ChunkStream]]:
        if sink is None:
            return None, {}
        dtype = _DTYPES[self.options.activation_dtype]
        pooled = None
        if self.options.pooled:
            pooled = ChunkStream(POOLINGS, self.offsets, (self.units,), listing.start, listing.stop,
                                 self.options.chunk_images, dtype, self.model.device, sink)
        spatial = {}
        for name, info in zip(self.layers, self.infos):
            if name in self.options.spatial_layers:
                spatial[name] = ChunkStream(
                    (SPATIAL,), [(info.name, 0, info.channels)], (info.channels, *info.spatial), listing.start,
                    listing.stop, self.options.spatial_chunk_images, dtype, torch.device("cpu"), sink,
                )
        return pooled, spatial

    def _result(self, totals: UnitTotals, fields: dict[str, ReceptiveField], listing: Listing,
                scanned: int, skipped: list[SkippedImage]) -> ScanResult:
        layers = {}
        referenced: set[int] = set()
        extremes = {"top": totals.top.result(), "bottom": totals.bottom.result()}
        for info, (name, lo, hi) in zip(self.infos, self.offsets):
            parts = {}
            for kind, arrays in extremes.items():
                keys, image, where = (a[lo:hi] for a in arrays)
                channels = np.broadcast_to(np.arange(hi - lo)[:, None], keys.shape)
                field = fields[info.name] if name not in self.bases else fields[info.name].union()
                box = field.lookup(channels, np.maximum(where, 0)).astype(np.int32)
                box[image < 0] = 0
                parts[kind] = Examples(keys.copy(), image.copy(), where.copy(), box)
                referenced.update(image[image >= 0].tolist())
            layers[name] = LayerResult(
                layer=name, layout=info.layout, channels=self.widths[name], spatial=tuple(info.spatial),
                top=parts["top"], bottom=parts["bottom"],
                images=totals.images[lo:hi].copy(), nonfinite=totals.nonfinite[lo:hi].copy(),
                sums=totals.sums.select(units=slice(lo, hi)), max_positive=totals.max_positive[lo:hi].copy(),
                sketch=totals.sketch.select(lo, hi),
            )
        positions = np.array(sorted(referenced), dtype=np.int64)
        ids = listing.ids(positions - listing.start) if len(positions) else []
        return ScanResult(
            model=self.model.name,
            weights_digest=self.model.weights_digest,
            listing=listing.fingerprint,
            input_size=self.model.preprocessing.input_size,
            k=self.options.k,
            ranges=((listing.start, listing.stop),) if len(listing) else (),
            scanned=scanned,
            skipped=tuple(sorted(skipped, key=lambda s: s.position)),
            image_ids=dict(zip(positions.tolist(), ids)),
            layers=layers,
        )
