"""Stream activation tensors out of a scan in image order, one chunk of images at a time.

Chunks cover global listing positions [start, stop) whose boundaries are multiples of
`chunk_images` (clipped to the shard), so each shard writes only its own chunks of an
images x channels array. Rows of images that were skipped stay NaN and are marked invalid.
Memory is bounded by one chunk per kind, however long the scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

POOLINGS = ("max", "mean")
SPATIAL = "spatial"


@dataclass(eq=False)
class ActivationChunk:
    """Activations of `layer` for listing positions [start, start + len(values)).

    kind "max"/"mean": values (n, C), the spatial max or mean per image and channel;
    kind "spatial": values (n, C, *spatial), the full map. `valid[i]` is False for skipped images.
    """

    layer: str
    kind: str
    start: int
    values: np.ndarray
    valid: np.ndarray

    @property
    def stop(self) -> int:
        return self.start + int(self.values.shape[0])


ChunkSink = Callable[[ActivationChunk], None]


class ChunkStream:
    """Buffers rows of several named arrays and hands full chunks to `sink`.

    `columns` splits the buffer's second axis into named pieces (e.g. the layers sharing one
    unit axis), so one buffer write per batch serves every layer.
    """

    def __init__(
        self,
        kinds: Sequence[str],
        columns: Sequence[tuple[str, int, int]],
        row_shape: tuple[int, ...],
        start: int,
        stop: int,
        chunk_images: int,
        dtype: torch.dtype,
        device: torch.device,
        sink: ChunkSink,
    ) -> None:
        self.kinds = list(kinds)
        self.columns = list(columns)
        self.start, self.stop = start, stop
        self.chunk_images = chunk_images
        self.sink = sink
        self.buffers = {
            kind: torch.full((chunk_images, *row_shape), float("nan"), dtype=dtype, device=device) for kind in kinds
        }
        self.valid = np.zeros(chunk_images, dtype=bool)
        self.chunk_start = start
        self.chunk_stop = self._chunk_end(start)

    def _chunk_end(self, position: int) -> int:
        return min((position // self.chunk_images + 1) * self.chunk_images, self.stop)

    def add(self, positions: np.ndarray, values: dict[str, torch.Tensor]) -> None:
        """Rows for global `positions` (increasing); values[kind] has one row per position."""
        done = 0
        while done < len(positions):
            if positions[done] >= self.chunk_stop:
                self._emit()
                continue
            end = int(np.searchsorted(positions, self.chunk_stop, side="left"))
            rows = positions[done:end] - self.chunk_start
            index = torch.from_numpy(rows).to(next(iter(self.buffers.values())).device)
            for kind, buffer in self.buffers.items():
                buffer.index_copy_(0, index, values[kind][done:end].to(buffer.dtype))
            self.valid[rows] = True
            done = end

    def advance(self, position: int) -> None:
        """Every position before `position` has been seen: emit the chunks that are complete."""
        while self.chunk_start < self.stop and self.chunk_stop <= position:
            self._emit()

    def finish(self) -> None:
        self.advance(self.stop)

    def _emit(self) -> None:
        n = self.chunk_stop - self.chunk_start
        valid = self.valid[:n].copy()
        for kind, buffer in self.buffers.items():
            host = buffer[:n].cpu().numpy().copy() if buffer.device.type == "cpu" else buffer[:n].cpu().numpy()
            for name, lo, hi in self.columns:
                self.sink(ActivationChunk(name, kind, self.chunk_start, np.ascontiguousarray(host[:, lo:hi]), valid))
            buffer.fill_(float("nan"))
        self.valid[:] = False
        self.chunk_start = self.chunk_stop
        self.chunk_stop = self._chunk_end(self.chunk_start)


class ChunkCollector:
    """A sink that keeps every chunk in memory and joins them per (layer, kind): for tests and notebooks."""

    def __init__(self) -> None:
        self.chunks: list[ActivationChunk] = []

    def __call__(self, chunk: ActivationChunk) -> None:
        self.chunks.append(chunk)

    def array(self, layer: str, kind: str) -> tuple[int, np.ndarray, np.ndarray]:
        """(start, values, valid) of all chunks of `layer` and `kind`, which must be contiguous."""
        parts = sorted((c for c in self.chunks if c.layer == layer and c.kind == kind), key=lambda c: c.start)
        if not parts:
            raise KeyError(f"no {kind} chunks for layer {layer}")
        for a, b in zip(parts, parts[1:]):
            if a.stop != b.start:
                raise ValueError(f"{kind} chunks of {layer} are not contiguous: [{a.start}, {a.stop}) then {b.start}")
        return (
            parts[0].start,
            np.concatenate([c.values for c in parts]),
            np.concatenate([c.valid for c in parts]),
        )
