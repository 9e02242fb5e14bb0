"""Where every object of an atlas lives, relative to the atlas root (see docs/storage.md).

All paths are '/'-separated and relative to the root URL; no I/O happens here.
"""

from __future__ import annotations

import os
import re
import time

from loupe.storage.errors import StorageError

FORMAT = "loupe-atlas/1"
POINTER = "atlas.json"
LOCK = ".atlas.lock"
VERSIONS = "versions"

#: The default basis of every layer: unit i is channel i. Its layer key is the layer's own name.
CHANNELS = "channels"
#: Joins a layer and a basis into the layer key that names a (layer, basis) everywhere in an atlas.
BASIS_SEPARATOR = "@"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+@-]{0,199}$")
_VERSION = re.compile(r"^\d{8}T\d{9}Z-[0-9a-f]{8}$")


def check_name(value: str, what: str) -> str:
    """Reject names that cannot be used verbatim as path segments and hive partition values."""
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value:
        raise StorageError(
            f"invalid {what} {value!r}: use 1-200 characters from letters, digits and '._+@-', "
            "starting with a letter or digit"
        )
    return value


def layer_key(layer: str, basis: str = CHANNELS) -> str:
    """The name a (layer, basis) has in an atlas: the layer itself for channels (so channel atlases
    keep their paths), else `<layer>@<basis>`, e.g. `features.7@sae`."""
    if basis == CHANNELS:
        return layer
    if BASIS_SEPARATOR in basis or BASIS_SEPARATOR in layer:
        raise StorageError(f"layer {layer!r} and basis {basis!r} must not contain {BASIS_SEPARATOR!r}")
    return f"{layer}{BASIS_SEPARATOR}{basis}"


def split_layer_key(key: str) -> tuple[str, str]:
    """(layer, basis) of a layer key; the inverse of `layer_key`."""
    layer, separator, basis = key.rpartition(BASIS_SEPARATOR)
    return (layer, basis) if separator else (key, CHANNELS)


def check_relative_path(path: object, where: str) -> str:
    """A path read from a manifest or checksum list must stay inside its version folder.

    Refuses absolute paths, '..', '.', empty segments, backslashes and URLs, so a planted
    manifest can never make a reader open something outside the atlas.
    """
    bad = (not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "://" in path
           or any(part in ("", ".", "..") for part in path.split("/")))
    if bad:
        raise StorageError(f"{where} names an unsafe path {path!r}: paths must be relative, inside the "
                           "version folder, without '..' or '.' segments", url=where)
    return path


def new_version_id(now: float | None = None) -> str:
    """A version id that sorts by creation time and is unique across concurrent builds."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"
    return f"{stamp}-{os.urandom(4).hex()}"


def check_version_id(version: str) -> str:
    if not isinstance(version, str) or not _VERSION.match(version):
        raise StorageError(f"invalid version id {version!r} (expected e.g. 20260101T120000000Z-1a2b3c4d)")
    return version


def version_dir(version: str) -> str:
    return f"{VERSIONS}/{version}"


def draft_info(version: str) -> str:
    """Written when a version is created: config, models, code version, base version."""
    return f"{version_dir(version)}/version.json"


def manifest(version: str) -> str:
    return f"{version_dir(version)}/manifest.json"


def checksums(version: str) -> str:
    return f"{version_dir(version)}/checksums.json"


def published_marker(version: str) -> str:
    return f"{version_dir(version)}/published.json"


def lease(version: str) -> str:
    """The draft's owner: which build may resume, seal and publish this version (see storage/lease.py)."""
    return f"{version_dir(version)}/lease.json"


def items_dir(version: str) -> str:
    return f"{version_dir(version)}/items"


def item_record(version: str, key: str) -> str:
    return f"{items_dir(version)}/{check_name(key, 'work item key')}.json"


def render_array(model: str, layer: str, kind: str) -> str:
    """Zarr array of one kind's renders, relative to a version directory."""
    return f"renders/{check_name(model, 'model')}/{check_name(layer, 'layer')}/{check_name(kind, 'render kind')}.zarr"


def objective_array(model: str, layer: str, kind: str) -> str:
    """Zarr array of the final objective value of each unit's render."""
    return f"renders/{check_name(model, 'model')}/{check_name(layer, 'layer')}/{check_name(kind, 'render kind')}.objective.zarr"


def activation_array(model: str, layer: str, pooling: str) -> str:
    """Zarr array of pooled scan activations (images x channels)."""
    return f"activations/{check_name(model, 'model')}/{check_name(layer, 'layer')}/{check_name(pooling, 'pooling')}.zarr"


def example_array(model: str, layer: str, kind: str, what: str) -> str:
    """Zarr array of a layer's example pictures or heat maps of one kind (top, bottom, samples)."""
    if what not in ("pictures", "heatmaps"):
        raise ValueError(f"example array must be pictures or heatmaps, got {what!r}")
    return f"examples/{check_name(model, 'model')}/{check_name(layer, 'layer')}/{check_name(kind, 'example kind')}.{what}.zarr"


def table_part(table: str, key: str, model: str | None = None, layer: str | None = None) -> str:
    """One Parquet file per work item; units/examples are hive-partitioned by model and layer."""
    name = f"part-{check_name(key, 'work item key')}.parquet"
    if model is None:
        return f"tables/{table}/{name}"
    return f"tables/{table}/model={check_name(model, 'model')}/layer={check_name(layer, 'layer')}/{name}"


def partial(key: str, name: str) -> str:
    """A work item's intermediate result, relative to a version directory (build state only)."""
    return f"partials/{check_name(key, 'work item key')}/{check_name(name, 'partial name')}"


BUILD_STATE = "build-state"


def build_state_listing(fingerprint: str) -> str:
    """A dataset listing saved once by the build driver and read by every scan worker."""
    return f"{BUILD_STATE}/listings/{check_name(fingerprint, 'listing fingerprint')}.parquet"


def build_state_receptive_fields(key: str) -> str:
    """Crop boxes of an architecture's layers, probed once and shared by every scan worker."""
    return f"{BUILD_STATE}/receptive-fields/{check_name(key, 'receptive-field key')}.npz"
