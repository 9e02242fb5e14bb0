"""What the driver computes once and every scan worker reads: the dataset listing and the layers'
receptive fields.

Both are plain data written and verified by `loupe.storage.BuildState` (the listing as Parquet,
receptive fields as npz of numbers), never pickles, so a planted object is refused with its URL
instead of run. The driver reads back (verifies) a copy saved by an earlier build before any item
runs, so a bad one fails the build early.
"""

from __future__ import annotations

import hashlib
import json

from loupe.jobs.build.resolve import ResolvedModel
from loupe.pipeline.data import Listing
from loupe.pipeline.errors import LoupeError
from loupe.storage import AtlasWriter, StorageError
from loupe.storage.build_state import BuildState


def save_listing(writer: AtlasWriter, listing: Listing) -> None:
    """Save the listing once for every worker and later build; a saved one is verified here, before compute."""
    state = BuildState.of(writer)
    if load_listing(state, listing.fingerprint) is None:
        state.put_listing(listing.fingerprint, listing.to_table())


def load_listing(state: BuildState, fingerprint: str) -> Listing | None:
    """The saved listing with this fingerprint (checksum, format and fingerprint verified), or None."""
    table = state.get_listing(fingerprint)
    if table is None:
        return None
    url = state.listing_url(fingerprint)
    try:
        loaded = Listing.from_table(table, url)
    except LoupeError as exc:
        raise StorageError(str(exc), url=url) from None
    if loaded.fingerprint != fingerprint:
        raise StorageError(f"listing {url} describes listing {loaded.fingerprint[:16]}..., not {fingerprint[:16]}...",
                           url=url)
    return loaded


def receptive_fields_key(model: ResolvedModel) -> tuple[str, tuple[str, ...]]:
    """The build-state key of a model's receptive fields, and the layers they cover.

    Fields depend only on the architecture, the input size and the layers, so later builds (and
    every scan worker) share them. Computing the key costs nothing: the probe itself is model
    compute and runs as a `fields` work item on a worker (`save_receptive_fields`).
    """
    layers = tuple(dict.fromkeys(layer.info.name for layer in model.layers))  # a layer with bases appears once
    identity = json.dumps({"source": model.config.source, "kwargs": model.config.model_kwargs,
                           "input_size": model.model.preprocessing.input_size, "layers": list(layers)}, sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:32], layers


def save_receptive_fields(writer: AtlasWriter, model, key: str, layers: tuple[str, ...]) -> bool:
    """Probe `layers` of a loaded model and save the fields under `key`, unless a valid copy exists
    (then nothing is probed). Returns whether it probed."""
    from loupe.pipeline.scan import fields_state, probe_receptive_fields

    state = BuildState.of(writer)
    if load_receptive_fields(state, key) is not None:
        return False
    state.put_receptive_fields(key, fields_state(probe_receptive_fields(model, list(layers))))
    return True


def load_receptive_fields(state: BuildState, key: str) -> dict | None:
    from loupe.pipeline.scan import fields_from_state

    arrays = state.get_receptive_fields(key)
    if arrays is None:
        return None
    try:
        return fields_from_state(arrays)
    except LoupeError as exc:
        url = state.receptive_fields_url(key)
        raise StorageError(f"receptive fields {url} are malformed: {exc}", url=url) from None
