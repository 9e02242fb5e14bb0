"""One call from a dataset (URL or listing) to a scan result: list, decode (in workers, or on the
model's device), copy ahead to the device, scan."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from loupe.pipeline.data.listing import Listing
from loupe.pipeline.data.loader import LoaderOptions, iter_batches
from loupe.pipeline.data.prefetch import prefetch_to_device
from loupe.pipeline.data.sources import list_images
from loupe.pipeline.scan.chunks import ChunkSink
from loupe.pipeline.scan.result import ScanResult
from loupe.pipeline.scan.scanner import ScanOptions, ScanProgress, Scanner


def scan_dataset(
    model,
    dataset: str | Listing,
    layers: Sequence[str] | Scanner,
    *,
    options: ScanOptions = ScanOptions(),
    loader: LoaderOptions = LoaderOptions(),
    storage_options: Mapping[str, Any] | None = None,
    on_chunk: ChunkSink | None = None,
    on_progress: Callable[[ScanProgress], None] | None = None,
) -> ScanResult:
    """Scan every image of `dataset` (a URL to list, or a listing/shard) with `model`.

    Pass a `Scanner` instead of layer names to reuse one across shards (its receptive fields are
    probed once). `storage_options` are the fsspec options for reading the images. On CUDA the
    next batch's images are copied while the current batch runs (`prefetch_to_device`), or, with
    `loader.decode == "device"`, decoded on the GPU itself.
    """
    scanner = layers if isinstance(layers, Scanner) else Scanner(model, layers, options)
    listing = dataset if isinstance(dataset, Listing) else list_images(dataset, storage_options=storage_options)
    preprocessing = scanner.model.preprocessing
    device = scanner.model.device
    batches = iter_batches(
        listing,
        preprocessing.input_size,
        preprocessing.resize_size,
        options=loader,
        storage_options=storage_options,
        pin_memory=device.type == "cuda",
        device=device,
    )
    return scanner.scan(prefetch_to_device(batches, device), listing, on_chunk=on_chunk, on_progress=on_progress,
                        pad_to=loader.images_per_batch)
