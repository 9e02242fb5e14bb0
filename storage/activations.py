"""Scan activation arrays: per (model, layer) and pooling (max, mean) an images x channels array,
float16 by default, chunked by image range so that each scan shard writes only its own chunk.
"""

from __future__ import annotations

import math

import numpy as np

from loupe.storage import arrays
from loupe.storage.errors import StorageError

POOLINGS = ("max", "mean")


def plan_image_chunks(n_images: int, shard_count: int) -> tuple[int, list[tuple[int, int]]]:
    """Chunk length and the [start, stop) image range of each scan shard, aligned to chunks.

    Scan shards must use these ranges (or any ranges aligned to the same chunk length) so that no
    two shards ever write the same chunk object.
    """
    if n_images < 1 or shard_count < 1:
        raise StorageError(f"cannot plan activation chunks for {n_images} images in {shard_count} shards")
    per_chunk = math.ceil(n_images / shard_count)
    ranges = [(s, min(s + per_chunk, n_images)) for s in range(0, n_images, per_chunk)]
    return per_chunk, ranges


def metadata(n_images: int, n_channels: int, images_per_chunk: int, dtype: str, attributes: dict) -> bytes:
    for name, value in (("n_images", n_images), ("n_channels", n_channels), ("images_per_chunk", images_per_chunk)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise StorageError(f"activation array: {name} must be a positive integer, got {value!r}")
    if np.dtype(dtype).kind != "f":
        raise StorageError(f"activation array: dtype must be a float type, got {dtype!r}")
    return arrays.metadata_bytes(
        shape=(n_images, n_channels),
        dtype=np.dtype(dtype).name,
        chunks=(images_per_chunk, n_channels),
        shards=None,
        dimension_names=["image", "channel"],
        attributes=attributes,
        fill_value=float("nan"),
    )


def check_chunk(meta: dict, image_start: int, values: np.ndarray, where: str) -> None:
    """A chunk write must start on a chunk boundary and end on the next one (or the array end)."""
    n_images, n_channels = meta["shape"]
    per_chunk = arrays.outer_chunk_shape(meta)[0]
    if not isinstance(values, np.ndarray) or values.ndim != 2 or values.shape[1] != n_channels:
        raise StorageError(f"{where}: values must have shape [images, {n_channels}], got {list(np.shape(values))}")
    stop = image_start + values.shape[0]
    if image_start < 0 or values.shape[0] < 1 or stop > n_images:
        raise StorageError(f"{where}: images {image_start}..{stop - 1} are outside the array's {n_images} images")
    if image_start % per_chunk or (stop % per_chunk and stop != n_images):
        raise StorageError(
            f"{where}: image range [{image_start}, {stop}) is not aligned to chunks of {per_chunk} images; "
            "use storage.plan_image_chunks to size scan shards"
        )


def encode_chunk(meta_bytes: bytes, dtype: str, image_start: int, values: np.ndarray) -> dict[str, bytes]:
    stop = image_start + values.shape[0]
    return arrays.encode_region(meta_bytes, (slice(image_start, stop), slice(None)), values.astype(dtype, copy=False))


def decode_chunk(meta_bytes: bytes, key: str, data: bytes, start: int, stop: int) -> np.ndarray:
    """The rows [start, stop) held by one verified chunk object `key` (e.g. 'c/3/0')."""
    return arrays.decode_region(meta_bytes, {key: data}, (slice(start, stop), slice(None)))
