"""Spectrum items: MACO's fixed magnitude, estimated from the scan dataset itself (never downloaded).

The listing's first `images` images are decoded as the model's input (like the scan) and folded
into a `MagnitudeSpectrum` at the render size; its state is saved as the item's npz partial and
read by every MACO render item of that size, which names this item as its input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from loupe.jobs.build.plan import SpectrumSpec, WorkItem, item_meta
from loupe.pipeline.errors import LoupeError
from loupe.storage import StorageError
from loupe.storage.build_state import partial_url, read_partial_arrays, write_partial_arrays

#: The partial a spectrum item writes.
SPECTRUM_PARTIAL = "spectrum.npz"
#: Images decoded at a time (bounded memory).
IMAGES_PER_STEP = 64


def run_spectrum(runner, item: WorkItem) -> dict[str, Any]:
    from loupe.jobs.build.scan_stage import listing_rows
    from loupe.pipeline.data.loader import read_images
    from loupe.pipeline.featurevis.spectrum import MagnitudeSpectrum

    spec: SpectrumSpec = item.spec
    preprocessing = runner.model.preprocessing
    listing = listing_rows(runner, spec.listing, 0, spec.images)
    options = (runner.scan_context or {}).get("dataset_storage_options")
    spectrum = MagnitudeSpectrum(spec.size, spec.size)
    skipped = 0
    for start in range(0, spec.images, IMAGES_PER_STEP):
        rows = np.arange(start, min(start + IMAGES_PER_STEP, spec.images))
        decoded = read_images(listing, rows, preprocessing.input_size, preprocessing.resize_size, options)
        skipped += len(decoded.skipped)
        if len(decoded.positions):
            spectrum.add(decoded.images)
    if spectrum.count == 0:
        raise LoupeError(f"none of the first {spec.images} dataset images could be decoded for MACO's spectrum")
    with runner.writer.item(item.key, item_meta(item, skipped_images=skipped)) as out:
        write_partial_arrays(out, SPECTRUM_PARTIAL, spectrum.state())
    return {"images": spectrum.count, "skipped": skipped}


def load_magnitude(writer, key: str) -> np.ndarray:
    """The mean magnitude [3, S, S // 2 + 1] a spectrum item saved (verified against its record)."""
    from loupe.pipeline.featurevis.spectrum import MagnitudeSpectrum

    try:
        return MagnitudeSpectrum.from_state(read_partial_arrays(writer, key, SPECTRUM_PARTIAL)).result()
    except LoupeError as exc:
        url = partial_url(writer, key, SPECTRUM_PARTIAL)
        raise StorageError(f"spectrum partial {url} of work item {key} is malformed: {exc}", url=url) from None
