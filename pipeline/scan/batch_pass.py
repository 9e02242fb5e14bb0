"""One scan pass over batches: the capture callback, the per-batch update and the chunk streams.

`Scanner.scan` drives a `BatchPass` over the batches; everything that lives only for one pass
(the unit accumulator, the streams of activation chunks, the reductions of the batch in flight)
is here, so the scanner itself only validates, loops and assembles the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

import torch

from loupe.pipeline.data.loader import Batch, SkippedImage
from loupe.pipeline.scan.accumulate import Reduced, UnitAccumulator, UnitTotals, concat, reduce_activation
from loupe.pipeline.scan.chunks import SPATIAL, ChunkStream
from loupe.pipeline.scan.layout import as_channels_first

if TYPE_CHECKING:
    from loupe.pipeline.models import LayerInfo
    from loupe.pipeline.models.basis import Basis


@dataclass
class Tally:
    """What a pass has covered so far: the next listing position, images scanned and skipped."""

    done: int
    scanned: int = 0
    skipped: list[SkippedImage] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def count(self, batch: Batch) -> None:
        self.skipped.extend(batch.skipped)
        self.scanned += len(batch)
        self.done = batch.stop

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


class BatchPass:
    """Runs one batch at a time through a capture and folds its reductions into the accumulator."""

    def __init__(self, sources: Mapping[str, str], infos: "list[LayerInfo]", offsets: list[tuple[str, int, int]], state: UnitAccumulator,
                 pooled: ChunkStream | None, spatial: dict[str, ChunkStream], *, lazy_positions: bool,
                 map_dtype: torch.dtype, bases: Mapping[str, "Basis"] | None = None) -> None:
        self.layers = list(sources)  # the scanned names, in unit order
        self.views: dict[str, list[str]] = {}  # model layer -> the scanned names it feeds
        for name, layer in sources.items():
            self.views.setdefault(layer, []).append(name)
        self.layouts = {info.name: info.layout for info in infos}
        self.ranges = {name: (lo, hi) for name, lo, hi in offsets}
        self.state = state
        self.pooled = pooled
        self.spatial = spatial
        self.lazy_positions = lazy_positions
        self.map_dtype = map_dtype
        self.bases = dict(bases or {})
        self._reduced: dict[str, Reduced] = {}
        self._maps: dict[str, torch.Tensor] = {}
        self._ranks: torch.Tensor | None = None

    def on_output(self, layer: str, activation: torch.Tensor) -> None:
        """Capture callback: reduce a layer's output, in each basis scanned, while the forward pass is running."""
        channels = as_channels_first(activation, self.layouts[layer]).flatten(2)
        for name in self.views[layer]:
            if name in self.bases:
                self._reduced[name] = self._reduce_basis(name, channels)
                continue
            floors = self.state.floors(*self.ranges[name], self._ranks) if self.lazy_positions else None
            self._reduced[name] = reduce_activation(channels, floors)
            if name in self.spatial:  # the tensor is only valid during the callback: copy it
                self._maps[name] = as_channels_first(activation, self.layouts[layer]).to(self.map_dtype, copy=True)

    def _reduce_basis(self, name: str, channels: torch.Tensor) -> Reduced:
        """A basis's units at every position, encoded and reduced a chunk of units at a time, so a
        wide SAE never holds (images x latents x positions) at once."""
        low, _ = self.ranges[name]
        parts = []
        for start, stop, values in self.bases[name].encode_chunks(channels.transpose(1, 2)):  # (B, P, units)
            floors = self.state.floors(low + start, low + stop, self._ranks) if self.lazy_positions else None
            parts.append(reduce_activation(values.transpose(1, 2).contiguous(), floors))
        return parts[0] if len(parts) == 1 else concat(parts)

    def run(self, capture, batch: Batch, device: torch.device, pad_to: int | None) -> None:
        """Forward one batch (padded to `pad_to` images) and fold its reductions in."""
        if len(batch):
            count = len(batch)
            images = batch.images.to(device, non_blocking=True).float().div_(255.0)
            if pad_to is not None and count < pad_to:
                images = torch.cat([images, images.new_zeros((pad_to - count, *images.shape[1:]))])
            positions = torch.from_numpy(batch.positions).to(device, non_blocking=True)
            ranks = torch.from_numpy(batch.keys).to(device, non_blocking=True)
            self._ranks = torch.cat([ranks, ranks.new_zeros(len(images) - count)])
            self._reduced.clear()
            self._maps.clear()
            capture.run(images)
            joined = concat([self._reduced[name] for name in self.layers]).head(count)
            self.state.add(joined, positions, ranks)
            if self.pooled is not None:
                self.pooled.add(batch.positions, {"max": joined.maxima, "mean": joined.means})
            for name, stream in self.spatial.items():
                stream.add(batch.positions, {SPATIAL: self._maps[name][:count]})
        for stream in self._streams():
            stream.advance(batch.stop)

    def finish(self) -> UnitTotals:
        """Flush the last chunks and return the host copy of every unit's statistics."""
        for stream in self._streams():
            stream.finish()
        return self.state.finish()

    def _streams(self) -> list[ChunkStream]:
        return [s for s in (self.pooled, *self.spatial.values()) if s is not None]
