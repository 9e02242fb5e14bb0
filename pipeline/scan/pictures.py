"""Example pictures and heat maps: what a unit page shows of a dataset example, cut once per image.

Given decoded images (each read once) and requests (image, unit, position of the max), one
forward pass per batch gives every requested unit's activation map, and each request becomes:

- a **picture**: the receptive field of the position, grown to a square (`square_box`, so the
  picture is not stretched), cut from the model input and resized to `example_size` (Pillow
  bilinear);
- a **heat map**: `heatmap_size`² cells over the same square; cell (i, j) holds the unit's
  activation at the feature position under the cell's centre pixel (nearest neighbour: row
  `floor(py * H / input_size)`), float16;
- the square in both frames: the model-input frame and the original image's pixel frame.

Batches are exactly `images_per_batch` images, padded with blank images like the scan, so the
activations are bit-identical to the scan's and a top example's value matches its table entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from loupe.pipeline.data.decode import input_box_to_image_box
from loupe.pipeline.data.loader import DecodedImages
from loupe.pipeline.errors import LoupeError
from loupe.pipeline.models import capture
from loupe.pipeline.scan.layout import as_channels_first, positions_count
from loupe.pipeline.scan.receptive_field import ReceptiveField

if TYPE_CHECKING:
    from loupe.pipeline.models import LoadedModel
    from loupe.pipeline.models.basis import Basis


@dataclass(frozen=True)
class PictureSettings:
    """Side of each stored picture and of its heat map."""

    example_size: int = 96
    heatmap_size: int = 24

    def __post_init__(self) -> None:
        for name in ("example_size", "heatmap_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise LoupeError(f"PictureSettings.{name} must be a positive integer (pixels), got {value!r}")


@dataclass(frozen=True)
class PictureRequests:
    """Which pictures to cut: image (global listing position), unit, flattened position of the max
    (-1: find the unit's first maximum in that image)."""

    image_index: np.ndarray
    unit: np.ndarray
    position: np.ndarray


@dataclass(frozen=True)
class Pictures:
    """One entry per request, in request order."""

    pixels: np.ndarray  # uint8 [m, P, P, 3]
    heatmaps: np.ndarray  # float16 [m, H, H]
    field_box: np.ndarray  # int32 [m, 4]: receptive field of the position, model-input frame
    input_box: np.ndarray  # int32 [m, 4]: the square picture, model-input frame
    image_box: np.ndarray  # float64 [m, 4]: the same square in the original image's pixels
    position: np.ndarray  # int64 [m]
    value: np.ndarray  # float32 [m]: the activation at `position` (the spatial max)
    image_size: np.ndarray  # int64 [m, 2]: original (height, width)


def square_box(boxes: np.ndarray, input_size: int) -> np.ndarray:
    """Grow half-open (y0, x0, y1, x1) boxes to squares of side max(h, w) (the short side grows
    evenly, an odd extra pixel at the end), shifted to lie inside [0, input_size] (int32).

    A picture shows this square, not the receptive field itself, so a picture of a tall or wide
    field (at the image border) is not stretched; the square still contains the whole field.
    """
    boxes = np.asarray(boxes, dtype=np.int64)
    y0, x0, y1, x1 = (boxes[..., i] for i in range(4))
    side = np.minimum(np.maximum(np.maximum(y1 - y0, x1 - x0), 1), input_size)

    def grow(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        start = lo - (side - (hi - lo)) // 2
        return np.clip(start, 0, input_size - side)

    top, left = grow(y0, y1), grow(x0, x1)
    return np.stack([top, left, top + side, left + side], axis=-1).astype(np.int32)


def cut_pictures(images: np.ndarray, rows: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Crop box i of CHW uint8 image rows[i] and resize it to size x size (Pillow bilinear)."""
    out = np.empty((len(rows), size, size, 3), dtype=np.uint8)
    for i, (row, (y0, x0, y1, x1)) in enumerate(zip(np.asarray(rows).tolist(), np.asarray(boxes).tolist())):
        crop = np.ascontiguousarray(images[row, :, y0:y1, x0:x1].transpose(1, 2, 0))
        out[i] = np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR))
    return out


def heat_maps(maps: np.ndarray, boxes: np.ndarray, input_size: int, size: int) -> np.ndarray:
    """Nearest-neighbour samples of each [Hf, Wf] map over its box, size x size, float16."""
    maps = np.asarray(maps, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float64)
    count, rows, cols = maps.shape
    cell = np.arange(size)[None, :] + 0.5
    py = boxes[:, :1] + cell * (boxes[:, 2:3] - boxes[:, :1]) / size  # [m, size]: each cell's centre pixel
    px = boxes[:, 1:2] + cell * (boxes[:, 3:4] - boxes[:, 1:2]) / size
    r = np.minimum(np.floor(py * rows / input_size).astype(np.int64), rows - 1)
    c = np.minimum(np.floor(px * cols / input_size).astype(np.int64), cols - 1)
    index = np.arange(count)[:, None, None]
    return maps[index, r[:, :, None], c[:, None, :]].astype(np.float16)


class PictureCutter:
    """Cuts pictures and heat maps of one layer's units from decoded images.

    Memory stays near one batch's layer output: the capture callback keeps only the requested
    units' maps of the images in the batch, never every unit's map of every image.
    """

    def __init__(self, model: "LoadedModel", layer: str, receptive_field: ReceptiveField,
                 settings: PictureSettings, images_per_batch: int, *, basis: "Basis | None" = None) -> None:
        """With a `basis` (of `layer`), units are the basis's units, encoded from the layer's
        activation exactly as the scan encodes them, and boxes are the union over channels."""
        self.model = model
        self.info = model.catalog[layer]  # LayerError names an unknown layer
        self.layer = layer
        self.basis = basis
        if basis is not None:
            basis.check_layer(self.info.channels)
            receptive_field = receptive_field.union()
        self.field = receptive_field
        self.settings = settings
        if not isinstance(images_per_batch, (int, np.integer)) or isinstance(images_per_batch, bool) \
                or images_per_batch < 1:
            raise LoupeError(f"images_per_batch must be a positive integer, got {images_per_batch!r}")
        self.images_per_batch = int(images_per_batch)
        spatial = tuple(self.info.spatial)
        self.map_shape = spatial if len(spatial) == 2 else (1, positions_count(spatial))
        size = model.preprocessing.input_size
        if tuple(receptive_field.input_size) != (size, size) or \
                receptive_field.boxes.shape[1] != positions_count(spatial):
            raise LoupeError(f"receptive field given for layer {layer} was probed for another input size or layer "
                             f"shape ({receptive_field.input_size}, {receptive_field.boxes.shape[1]} positions; "
                             f"the model takes {size}px and the layer has {positions_count(spatial)} positions)")

    def cut(self, decoded: DecodedImages, requests: PictureRequests) -> Pictures:
        """One picture, heat map and set of boxes per request, in request order."""
        image_index, unit, wanted = self._check(decoded, requests)
        rows = decoded.rows(image_index)
        maps = self._unit_maps(decoded, rows, unit)
        flat = maps.reshape(len(unit), int(np.prod(self.map_shape)))
        first_max = flat.argmax(axis=1) if len(unit) else np.zeros(0, np.int64)  # first maximum, like torch.max
        position = np.where(wanted >= 0, wanted, first_max).astype(np.int64)
        value = flat[np.arange(len(unit)), position].astype(np.float32)
        size = self.model.preprocessing.input_size
        field_box = self.field.lookup(unit, position).astype(np.int32).reshape(-1, 4)
        input_box = square_box(field_box, size).reshape(-1, 4)
        sizes = decoded.original_sizes[rows].reshape(-1, 2).astype(np.int64)
        return Pictures(
            pixels=cut_pictures(decoded.images, rows, input_box, self.settings.example_size),
            heatmaps=heat_maps(maps, input_box, size, self.settings.heatmap_size),
            field_box=field_box, input_box=input_box,
            image_box=input_box_to_image_box(input_box, sizes, size, self.model.preprocessing.resize_size),
            position=position, value=value, image_size=sizes,
        )

    def _check(self, decoded: DecodedImages, requests: PictureRequests) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image_index, unit, wanted = (np.asarray(a, dtype=np.int64).reshape(-1)
                                     for a in (requests.image_index, requests.unit, requests.position))
        if not (len(image_index) == len(unit) == len(wanted)):
            raise LoupeError(f"picture requests need as many images, units and positions; got {len(image_index)}, "
                             f"{len(unit)} and {len(wanted)}")
        channels = self.basis.units if self.basis is not None else self.info.channels
        positions = int(np.prod(self.map_shape))
        bad_unit = (unit < 0) | (unit >= channels)
        if bad_unit.any():
            raise LoupeError(f"layer {self.layer} has {channels} units; a picture was asked for unit "
                             f"{int(unit[bad_unit][0])}")
        bad_position = (wanted < -1) | (wanted >= positions)
        if bad_position.any():
            raise LoupeError(f"a picture request names position {int(wanted[bad_position][0])}, outside layer "
                             f"{self.layer}'s {positions} positions (or -1: find the maximum)")
        missing = ~decoded.has(image_index)
        if missing.any():
            position = int(image_index[missing][0])
            why = {s.position: s for s in decoded.skipped}.get(position)
            raise LoupeError(f"image {why.image_id} (listing position {position}) was skipped when decoded "
                             f"({why.reason}); drop its picture requests first" if why else
                             f"image at listing position {position} was not among the decoded images")
        return image_index, unit, wanted

    def _unit_maps(self, decoded: DecodedImages, rows: np.ndarray, unit: np.ndarray) -> np.ndarray:
        """Each request's map [m, H, W] (float32), from one padded forward per batch that holds a request."""
        maps = np.zeros((len(unit), *self.map_shape), dtype=np.float32)
        device = self.model.device
        pending: dict[str, np.ndarray] = {}  # the batch in flight: which requests, which rows in it

        def keep(name: str, activation: torch.Tensor) -> None:  # the tensor is only valid during the call
            mine, batch_rows = pending["mine"], pending["rows"]
            values = as_channels_first(activation, self.info.layout)
            rows = torch.from_numpy(batch_rows).to(values.device)
            units = torch.from_numpy(unit[mine]).to(values.device)
            if self.basis is not None:  # only each request's own latent, encoded like the scan: (m, P)
                picked = self.basis.encode_units(values[rows].flatten(2).transpose(1, 2), units)
            else:
                picked = values[rows, units]
            maps[mine] = picked.float().reshape(len(mine), *self.map_shape).cpu().numpy()

        count = len(decoded.positions)
        with capture(self.model, [self.layer], on_output=keep) as cap, torch.inference_mode():
            for start in range(0, count, self.images_per_batch):
                stop = min(start + self.images_per_batch, count)
                mine = np.flatnonzero((rows >= start) & (rows < stop))
                if not len(mine):
                    continue
                pending.update(mine=mine, rows=rows[mine] - start)
                images = torch.from_numpy(decoded.images[start:stop]).to(device).float().div_(255.0)
                if len(images) < self.images_per_batch:  # same shape as the scan's forwards: same kernels
                    images = torch.cat([images, images.new_zeros((self.images_per_batch - len(images),
                                                                  *images.shape[1:]))])
                cap.run(images)
        return maps
