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
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch

from loupe.pipeline.models import capture
from loupe.pipeline.scan.layout import as_channels_first
from loupe.pipeline.scan.state import State, StateError, prefixed, strings, take, unprefixed

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

    def union(self) -> "ReceptiveField":
        """One row of boxes covering every channel's box at each position: the field of a unit that
        mixes channels (a direction or an SAE latent)."""
        if self.shared:
            return self
        boxes = np.concatenate([self.boxes[..., :2].min(axis=0), self.boxes[..., 2:].max(axis=0)], axis=-1)
        return ReceptiveField(self.layer, self.input_size, boxes[None].astype(np.int32))

    @property
    def shared(self) -> bool:
        return self.boxes.shape[0] == 1

    def state(self) -> State:
        return {"layer": np.array(self.layer), "input_size": np.array(self.input_size, dtype=np.int64),
                "boxes": np.asarray(self.boxes, dtype=np.int32)}

    @classmethod
    def from_state(cls, state: State) -> "ReceptiveField":
        boxes = take(state, "boxes", "int", ndim=3)
        size = take(state, "input_size", "int", ndim=1)
        if boxes.shape[-1] != 4 or size.shape != (2,):
            raise StateError(f"receptive field state has boxes of shape {boxes.shape} and input size {size.tolist()}; "
                             "expected (C, P, 4) and (height, width)")
        return cls(str(take(state, "layer", "str", ndim=0)), (int(size[0]), int(size[1])),
                   np.ascontiguousarray(boxes, dtype=np.int32))

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


def fields_state(fields: Mapping[str, ReceptiveField]) -> State:
    """Several layers' fields as one plain-array state (for a build to save once and share)."""
    out: State = {"layers": strings(fields)}
    for index, value in enumerate(fields.values()):
        out.update(prefixed(f"layer{index}", value.state()))
    return out


def fields_from_state(state: State) -> dict[str, ReceptiveField]:
    """The fields saved by `fields_state`, keyed by layer."""
    fields = {}
    for index, name in enumerate(take(state, "layers", "str", ndim=1).tolist()):
        value = ReceptiveField.from_state(unprefixed(f"layer{index}", state))
        if value.layer != name:
            raise StateError(f"receptive field state lists layer {name!r} but holds boxes of {value.layer!r}")
        fields[name] = value
    return fields
