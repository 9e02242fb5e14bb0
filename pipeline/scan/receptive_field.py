"""Receptive-field crop boxes, measured exactly by following NaNs through the real model.

Analytic formulas (size, stride, padding per conv/pool) break on branches (ResNet shortcuts,
Inception concatenations), asymmetric padding, adaptive pooling and attention; gradients of one
position miss pixels whose path is switched off by a ReLU or a max-pool for that input. NaN has
neither problem: every standard op (conv, batch norm, ReLU, clamp, max/avg pool, add, concat,
attention) turns a NaN input into a NaN output wherever the output depends on it, whatever the
weights. So the model is run on probe images that are NaN in exactly one input row (or column);
an output position turns NaN in the probe for row r exactly when its receptive field touches row
r. The first and last such rows and columns are the exact bounding box of the receptive field,
per channel and per position, clipped to the image, for any architecture.

Cost: one forward of 2 x input_size probe images per model (up to the deepest layer), once; the
boxes are then a table lookup. Positions that depend on no pixel at all get the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from loupe.pipeline.models import capture
from loupe.pipeline.scan.layout import as_channels_first

if TYPE_CHECKING:
    from loupe.pipeline.models import LoadedModel

@dataclass(frozen=True)
class ReceptiveField:
    """Crop boxes of one layer: `boxes[c, p] = (y0, x0, y1, x1)`, half-open, in input pixels.

    `boxes` has one row per channel, or a single row shared by all channels when they agree
    (the usual case), and one column per flattened spatial position.
    """

    layer: str
    input_size: tuple[int, int]
    boxes: np.ndarray  # int32 (C or 1, P, 4)

    def lookup(self, channels: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Boxes (..., 4) for arrays of channel indices and flattened positions."""
        channels = np.asarray(channels, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.int64)
        rows = channels if self.boxes.shape[0] > 1 else np.zeros_like(channels)
        return self.boxes[rows, np.clip(positions, 0, self.boxes.shape[1] - 1)]

    @property
    def shared(self) -> bool:
        return self.boxes.shape[0] == 1

    def size(self) -> tuple[int, int]:
        """Largest box height and width: the receptive field size away from borders."""
        heights = self.boxes[..., 2] - self.boxes[..., 0]
        widths = self.boxes[..., 3] - self.boxes[..., 1]
        return int(heights.max()), int(widths.max())


def probe_receptive_fields(
    model: "LoadedModel", layers: Sequence[str], *, chunk: int = 16
) -> dict[str, ReceptiveField]:
    """Exact crop boxes for `layers` of `model` at its input size (probe images in chunks of `chunk`)."""
    size = model.preprocessing.input_size
    layouts = {name: model.catalog[name].layout for name in layers}
    first: dict[tuple[str, str], torch.Tensor] = {}
    last: dict[tuple[str, str], torch.Tensor] = {}
    lines = torch.zeros(0, dtype=torch.int64)
    axis = "y"

    def on_output(name: str, activation: torch.Tensor) -> None:
        hit = as_channels_first(activation, layouts[name]).flatten(2).isnan()  # (n, C, P)
        any_hit = hit.any(dim=0)
        hit = hit.to(torch.uint8)
        index = lines.to(hit.device)
        low = torch.where(any_hit, index[hit.argmax(dim=0)], size)  # argmax: first probe line that hits
        high = torch.where(any_hit, index[len(index) - 1 - hit.flip(0).argmax(dim=0)], -1)
        key = (name, axis)
        first[key] = low if key not in first else torch.minimum(first[key], low)
        last[key] = high if key not in last else torch.maximum(last[key], high)

    with capture(model, layers, on_output=on_output) as cap, torch.inference_mode():
        for axis in ("y", "x"):
            for lo in range(0, size, chunk):
                lines = torch.arange(lo, min(lo + chunk, size))
                probes = torch.full((len(lines), 3, size, size), 0.5, device=model.device)
                for i, line in enumerate(lines.tolist()):
                    if axis == "y":
                        probes[i, :, line, :] = float("nan")
                    else:
                        probes[i, :, :, line] = float("nan")
                cap.run(probes)
    fields = {}
    for name in layers:
        y0, x0 = first[(name, "y")].cpu().numpy(), first[(name, "x")].cpu().numpy()
        y1, x1 = last[(name, "y")].cpu().numpy() + 1, last[(name, "x")].cpu().numpy() + 1
        boxes = np.stack([y0, x0, y1, x1], axis=-1).astype(np.int32)  # (C, P, 4)
        empty = (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])
        boxes[empty] = (0, 0, size, size)
        if (boxes == boxes[:1]).all():
            boxes = boxes[:1]
        fields[name] = ReceptiveField(name, (size, size), np.ascontiguousarray(boxes))
    return fields
