"""Datasets for scans: list once, shard by position, decode in parallel, skip bad images.

    listing = list_images("s3://bucket/imagenet/val/", storage_options=opts)
    table = listing.to_table()                                 # planner, once (stored by loupe.storage.BuildState)
    shard = Listing.from_table(table, where).shard(count=64, index=7)   # each worker
    for batch in iter_batches(shard, 224, 256): ...             # uint8 RGB, in order
    batches = prefetch_to_device(iter_batches(shard, 224, 256, pin_memory=True), "cuda")  # copy one ahead

`LoaderOptions(decode="device")` decodes JPEGs on the model's device (`device_decode`, imported
only when used: it loads torchvision's transforms).
"""

from loupe.pipeline.data.decode import ImageDecodeError, decode_image, resize_and_crop
from loupe.pipeline.data.errors import DatasetError
from loupe.pipeline.data.listing import FOLDER, PARQUET, Listing, shard_bounds
from loupe.pipeline.data.loader import DECODERS, Batch, ImageReader, LoaderOptions, SkippedImage, iter_batches
from loupe.pipeline.data.prefetch import prefetch_to_device
from loupe.pipeline.data.sources import IMAGE_EXTENSIONS, list_images

__all__ = [
    "DECODERS",
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
    "prefetch_to_device",
    "resize_and_crop",
    "shard_bounds",
]
