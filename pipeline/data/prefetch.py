"""Copy the next batch to the GPU while the current one runs through the model.

A host->device copy issued on the consumer's own stream waits behind the forward in flight and
the next forward waits for it: the GPU idles for every copy. `prefetch_to_device` keeps one batch
ahead and copies its (pinned) images on a side stream, so the copy overlaps the current forward;
before a batch is yielded the consumer's stream waits for its copy, and the images are marked as
used on that stream so the caching allocator cannot hand their memory to the side stream early.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Iterator

import torch

from loupe.pipeline.data.loader import Batch

__all__ = ["prefetch_to_device"]


def prefetch_to_device(batches: Iterable[Batch], device: torch.device | str) -> Iterator[Batch]:
    """`batches` in order with images on `device`, each copied one batch ahead on a side CUDA stream.

    Anything but CUDA passes the batches through unchanged (a CPU scan has nothing to overlap),
    and batches already on the device (device decoding) are not copied."""
    device = torch.device(device)
    if device.type != "cuda":
        yield from batches
        return
    if device.index is None:  # tensors report "cuda:N"; compare like with like
        device = torch.device("cuda", torch.cuda.current_device())
    side = torch.cuda.Stream(device)
    pending: tuple[Batch, torch.cuda.Event | None] | None = None
    for batch in batches:
        staged = _start_copy(batch, device, side)
        if pending is not None:
            yield _finish_copy(*pending, device)
        pending = staged
    if pending is not None:
        yield _finish_copy(*pending, device)


def _start_copy(batch: Batch, device: torch.device, side: torch.cuda.Stream) -> tuple[Batch, torch.cuda.Event | None]:
    """Issue the images' copy on `side`; the event marks its end (None: nothing to copy)."""
    if batch.images.device == device:
        return batch, None
    with torch.cuda.stream(side):
        images = batch.images.to(device, non_blocking=True)
        done = torch.cuda.Event()
        done.record(side)
    return replace(batch, images=images), done


def _finish_copy(batch: Batch, done: torch.cuda.Event | None, device: torch.device) -> Batch:
    """Make the consumer's current stream wait for the copy and own the copied images."""
    if done is not None:
        stream = torch.cuda.current_stream(device)
        stream.wait_event(done)
        batch.images.record_stream(stream)
    return batch
