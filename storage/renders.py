"""Render arrays: per (model, layer, kind) a units x H x W x 3 (or 4: RGBA) uint8 Zarr v3 array, sharded so that
one shard object holds exactly the units of one render work item, plus a float32 array of each
unit's final objective value (one chunk per work item).

A unit's index along the first axis is its channel index in the layer, so it stays stable when a
config renders a different subset of units. Inner chunks hold one unit, so reading a unit costs a
shard-index read plus one byte-range read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loupe.storage import arrays
from loupe.storage.errors import StorageError


@dataclass(frozen=True)
class RenderGeometry:
    """Shape of one kind's render array for a layer."""

    n_units: int
    height: int
    width: int
    units_per_shard: int
    samples: int | None = None  # images per unit (e.g. diversity); None means one image per unit
    channels: int = 3  # 3: RGB; 4: RGBA (a MACO render's transparency map is its alpha)

    def validate(self, where: str) -> None:
        for name in ("n_units", "height", "width", "units_per_shard"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise StorageError(f"{where}: {name} must be a positive integer, got {value!r}")
        if self.samples is not None and (not isinstance(self.samples, (int, np.integer)) or self.samples < 1):
            raise StorageError(f"{where}: samples must be a positive integer or None, got {self.samples!r}")
        if self.channels not in (3, 4):
            raise StorageError(f"{where}: renders have 3 (RGB) or 4 (RGBA) channels, got {self.channels!r}")

    @property
    def unit_shape(self) -> tuple[int, ...]:
        base = (self.height, self.width, self.channels)
        return base if self.samples is None else (self.samples, *base)


def images_metadata(geometry: RenderGeometry, attributes: dict) -> bytes:
    g = geometry
    colour = "rgb" if g.channels == 3 else "rgba"
    dims = ["unit", "y", "x", colour] if g.samples is None else ["unit", "sample", "y", "x", colour]
    return arrays.metadata_bytes(
        shape=(g.n_units, *g.unit_shape),
        dtype="uint8",
        chunks=(1, *g.unit_shape),
        shards=(g.units_per_shard, *g.unit_shape),
        dimension_names=dims,
        attributes=attributes,
    )


def objective_metadata(geometry: RenderGeometry, attributes: dict) -> bytes:
    g = geometry
    extra = () if g.samples is None else (g.samples,)
    dims = ["unit"] if g.samples is None else ["unit", "sample"]
    return arrays.metadata_bytes(
        shape=(g.n_units, *extra),
        dtype="float32",
        chunks=(g.units_per_shard, *extra),
        shards=None,
        dimension_names=dims,
        attributes=attributes,
        fill_value=float("nan"),
    )


def geometry_from_metadata(meta: dict) -> RenderGeometry:
    shape = meta["shape"]
    shard = arrays.outer_chunk_shape(meta)
    if len(shape) == 4:
        return RenderGeometry(shape[0], shape[1], shape[2], shard[0], channels=shape[3])
    return RenderGeometry(shape[0], shape[2], shape[3], shard[0], samples=shape[1], channels=shape[4])


def check_units(geometry: RenderGeometry, units: np.ndarray, images: np.ndarray, objective: np.ndarray, where: str) -> None:
    """Renders must be uint8 images of the declared size, one per listed unit; the units strictly
    increasing and inside one shard of the array (one item, one shard object)."""
    g = geometry
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise StorageError(f"{where}: images must be a uint8 numpy array, got {getattr(images, 'dtype', type(images))}")
    if images.ndim != 1 + len(g.unit_shape) or tuple(images.shape[1:]) != g.unit_shape:
        raise StorageError(f"{where}: images must have shape [n, {', '.join(map(str, g.unit_shape))}], got {list(images.shape)}")
    if units.ndim != 1 or len(units) < 1 or len(units) != images.shape[0]:
        raise StorageError(f"{where}: got {images.shape[0]} images for units {units.tolist()}; give one image per unit")
    if (np.diff(units) <= 0).any():
        raise StorageError(f"{where}: units {units.tolist()} must be strictly increasing (each unit once)")
    first, last = int(units[0]), int(units[-1])
    if first < 0 or last >= g.n_units:
        raise StorageError(f"{where}: units {first}..{last} are outside the layer's {g.n_units} units")
    if first // g.units_per_shard != last // g.units_per_shard:
        raise StorageError(
            f"{where}: units {first}..{last} span more than one shard of {g.units_per_shard} units; "
            "a render work item must cover units inside one shard"
        )
    expected = (len(units),) if g.samples is None else (len(units), g.samples)
    if np.shape(objective) != expected:
        raise StorageError(f"{where}: objective values must have shape {list(expected)}, got {list(np.shape(objective))}")


def encode_units(images_meta: bytes, objective_meta: bytes, units: np.ndarray, images: np.ndarray,
                 objective: np.ndarray) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The shard object of the images array and the chunk object of the objective array, each
    encoded once from all of `units` (units not listed stay absent / NaN)."""
    image_objects = arrays.encode_rows(images_meta, units, images)
    objective_objects = arrays.encode_rows(objective_meta, units, np.asarray(objective, dtype=np.float32))
    return image_objects, objective_objects


def shard_key(geometry: RenderGeometry, unit: int) -> str:
    """Object key (inside the array) of the shard holding a unit."""
    index = (unit // geometry.units_per_shard,) + (0,) * len(geometry.unit_shape)
    return "c/" + "/".join(map(str, index))
