"""Example-picture arrays: per (model, layer, kind) with kind in top, bottom, samples,
`<kind>.pictures.zarr` uint8 [units, slots, P, P, 3] and `<kind>.heatmaps.zarr` float16
[units, slots, H, H], one inner chunk per unit and `units_per_shard` units per shard object.

One unit's pictures (or heat maps) of a kind are therefore one byte-range read after the shard
index. The reduce item of a layer writes every shard of its arrays, each object encoded once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loupe.storage import arrays
from loupe.storage.errors import StorageError

KINDS = ("top", "bottom", "samples")
WHAT = ("pictures", "heatmaps")


@dataclass(frozen=True)
class ExampleGeometry:
    n_units: int
    slots: int
    example_size: int
    heatmap_size: int
    units_per_shard: int

    def validate(self, where: str) -> None:
        for name in ("n_units", "slots", "example_size", "heatmap_size", "units_per_shard"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise StorageError(f"{where}: {name} must be a positive integer, got {value!r}")


def check_kind(kind: str, where: str) -> None:
    if kind not in KINDS:
        raise StorageError(f"{where}: example kind must be one of {KINDS}, got {kind!r}")


def pictures_metadata(g: ExampleGeometry, attributes: dict) -> bytes:
    unit = (g.slots, g.example_size, g.example_size, 3)
    return arrays.metadata_bytes(shape=(g.n_units, *unit), dtype="uint8", chunks=(1, *unit),
                                 shards=(g.units_per_shard, *unit), dimension_names=["unit", "slot", "y", "x", "rgb"],
                                 attributes=attributes)


def heatmaps_metadata(g: ExampleGeometry, attributes: dict) -> bytes:
    unit = (g.slots, g.heatmap_size, g.heatmap_size)
    return arrays.metadata_bytes(shape=(g.n_units, *unit), dtype="float16", chunks=(1, *unit),
                                 shards=(g.units_per_shard, *unit), dimension_names=["unit", "slot", "y", "x"],
                                 attributes=attributes, fill_value=float("nan"))


def geometry_from_metadata(pictures: dict, heatmaps: dict) -> ExampleGeometry:
    shape = pictures["shape"]
    return ExampleGeometry(shape[0], shape[1], shape[2], heatmaps["shape"][2], arrays.outer_chunk_shape(pictures)[0])


def check_units(g: ExampleGeometry, units: np.ndarray, pictures: np.ndarray, heatmaps: np.ndarray, where: str) -> None:
    """Pictures uint8 [n, slots, P, P, 3] and heat maps float16 [n, slots, H, H] for strictly increasing units."""
    if not isinstance(pictures, np.ndarray) or pictures.dtype != np.uint8 or \
            pictures.shape[1:] != (g.slots, g.example_size, g.example_size, 3):
        raise StorageError(f"{where}: pictures must be uint8 [n, {g.slots}, {g.example_size}, {g.example_size}, 3], "
                           f"got {getattr(pictures, 'dtype', type(pictures))} {list(np.shape(pictures))}")
    if not isinstance(heatmaps, np.ndarray) or heatmaps.dtype != np.float16 or \
            heatmaps.shape[1:] != (g.slots, g.heatmap_size, g.heatmap_size):
        raise StorageError(f"{where}: heat maps must be float16 [n, {g.slots}, {g.heatmap_size}, {g.heatmap_size}], "
                           f"got {getattr(heatmaps, 'dtype', type(heatmaps))} {list(np.shape(heatmaps))}")
    if units.ndim != 1 or len(units) < 1 or len(units) != len(pictures) or len(units) != len(heatmaps):
        raise StorageError(f"{where}: got {len(pictures)} pictures and {len(heatmaps)} heat maps for "
                           f"{len(units)} units; give one of each per unit")
    if (np.diff(units) <= 0).any():
        raise StorageError(f"{where}: units must be strictly increasing, got {units.tolist()[:10]}...")
    if units[0] < 0 or units[-1] >= g.n_units:
        raise StorageError(f"{where}: units {int(units[0])}..{int(units[-1])} are outside the layer's {g.n_units} units")


def shard_key(g: ExampleGeometry, unit: int, ndim: int) -> str:
    """Object key (inside the array) of the shard holding a unit."""
    return "c/" + "/".join(map(str, (unit // g.units_per_shard,) + (0,) * (ndim - 1)))
