"""Datasets for scans: list once, shard by position, decode in parallel, skip bad images.

    listing = list_images("s3://bucket/imagenet/val/", storage_options=opts)
    table = listing.to_table()                                 # planner, once (stored by loupe.storage.BuildState)
    shard = Listing.from_table(table, where).shard(count=64, index=7)   # each worker
    for batch in iter_batches(shard, 224, 256): ...             # uint8 RGB, in order
"""

from loupe.pipeline.data.decode import ImageDecodeError, decode_image, resize_and_crop
from loupe.pipeline.data.errors import DatasetError
from loupe.pipeline.data.listing import FOLDER, PARQUET, Listing, shard_bounds
from loupe.pipeline.data.loader import Batch, ImageReader, LoaderOptions, SkippedImage, iter_batches
from loupe.pipeline.data.sources import IMAGE_EXTENSIONS, list_images

__all__ = [
    "FOLDER",
    "IMAGE_EXTENSIONS",
    "PARQUET",
    "Batch",
    "DatasetError",
    "ImageDecodeError",
    "ImageReader",
    "Listing",
    "LoaderOptions",
    "SkippedImage",
    "decode_image",
    "iter_batches",
    "list_images",
    "resize_and_crop",
    "shard_bounds",
]
