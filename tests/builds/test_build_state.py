"""A build (in process, tiny model) refuses planted or corrupted build state, naming the object, and
never runs what it holds; its scan tables equal one direct `scan_dataset` pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loupe.jobs.build import scan_stage
from loupe.jobs.build import run_build
from loupe.jobs.build.config import parse_config
from loupe.jobs.build.resolve import build_model
from loupe.pipeline.data import LoaderOptions, list_images
from loupe.pipeline.scan import ScanOptions, Scanner, scan_dataset
from loupe.storage import ChecksumError, StorageError, open_atlas
from loupe.storage.build_state import SIDECAR_SUFFIX
from loupe.storage.checksums import canonical_json, entry

from tests.builds.build_helpers import tiny_config, write_images
from tests.scan.helpers import planted_pickle

LAYERS = ("layer1.0.bn1", "layer2")


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "images", count=8)


def scan_only(url: str, images: Path, k: int = 3) -> dict:
    config = tiny_config(url, str(images))
    config["render"] = {"channel": {"enabled": False}}
    config["scan"]["k"] = k
    return config


def build(config: dict, log=lambda _: None):
    return run_build(parse_config(config), executor="local", progress=False, log=log)


def forge(path: Path, data: bytes) -> None:
    """Replace an object and its checksum sidecar, as someone with write access to the bucket could."""
    path.write_bytes(data)
    Path(f"{path}{SIDECAR_SUFFIX}").write_bytes(canonical_json({"format": "loupe-build-state/1", **entry(data)}))


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("with_sidecar", [False, True])
def test_a_planted_listing_fails_the_build_before_any_item(tmp_path, images, with_sidecar):
    url, marker = tmp_path / "atlas", tmp_path / "marker"
    listing = url / "build-state" / "listings" / f"{list_images(str(images)).fingerprint}.parquet"
    listing.parent.mkdir(parents=True)
    if with_sidecar:
        forge(listing, planted_pickle(marker))
    else:
        listing.write_bytes(planted_pickle(marker))
    with pytest.raises(StorageError, match="sidecar|not a Parquet listing") as error:
        build(scan_only(str(url), images))
    assert str(listing) in str(error.value)
    assert not marker.exists()
    assert not list((url / "versions").glob("*/items/*.json")), "no item may run on a refused listing"


@pytest.mark.parametrize("damage", ["pickle", "flipped byte"])
def test_planted_or_corrupted_receptive_fields_fail_the_next_build(tmp_path, images, damage):
    url, marker = tmp_path / "atlas", tmp_path / "marker"
    assert build(scan_only(str(url), images)).published
    [fields] = (url / "build-state" / "receptive-fields").glob("*.npz")
    forge(fields, planted_pickle(marker)) if damage == "pickle" else flip_byte(fields)
    expected = ChecksumError if damage == "flipped byte" else StorageError
    with pytest.raises(expected, match="checksum mismatch" if damage == "flipped byte" else "refused") as error:
        build(scan_only(str(url), images, k=2))  # new scan items: the fields are read again
    assert error.value.url == str(fields) and str(fields) in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["pickle", "flipped byte"])
def test_a_planted_or_corrupted_scan_partial_fails_the_reduce(tmp_path, images, monkeypatch, damage):
    url, marker = tmp_path / "atlas", tmp_path / "marker"

    def no_reduce(runner, item):
        raise OSError("simulated crash before the reduce")

    monkeypatch.setattr(scan_stage, "_run_reduce", no_reduce)
    first = build(scan_only(str(url), images))
    assert not first.published and len(first.failed) == len(LAYERS)  # one reduce per layer
    monkeypatch.undo()
    version = url / "versions" / first.version
    [partial, *_] = sorted(version.glob(f"partials/scan-*/{scan_stage.partial_name(0)}"))
    if damage == "pickle":  # the attacker also rewrites the checksum in the item's completion record
        payload = planted_pickle(marker)
        partial.write_bytes(payload)
        record_path = version / "items" / f"{partial.parent.name}.json"
        record = json.loads(record_path.read_text())
        record["objects"][f"partials/{partial.parent.name}/{partial.name}"] = entry(payload)
        record_path.write_bytes(canonical_json(record))
    else:
        flip_byte(partial)
    lines: list[str] = []
    second = build(scan_only(str(url), images), log=lines.append)
    assert not second.published and len(second.failed) == 1 and all(k.startswith("reduce-") for k in second.failed)
    [failure] = [line for line in lines if "failed" in line and "reduce-" in line]
    assert str(partial) in failure
    assert ("ChecksumError" if damage == "flipped byte" else "not a plain-array build-state object") in failure
    assert not marker.exists()


def test_build_tables_equal_one_direct_scan_pass(tmp_path, images):
    url = tmp_path / "atlas"
    config = scan_only(str(url), images)
    assert build(config).published
    parsed = parse_config(config)
    model = build_model(parsed.models[0], with_weights=True)
    direct = scan_dataset(model, list_images(str(images)), Scanner(model, list(LAYERS), ScanOptions(k=3)),
                          loader=LoaderOptions(images_per_batch=parsed.scan.images_per_batch, workers=0))
    atlas = open_atlas(str(url))
    for layer in LAYERS:
        for stored, expected, order in (
            (atlas.units_table("r20", layer), direct.units_table(), ["unit"]),
            (atlas.examples("r20", layer), direct.examples_table(), ["unit", "kind", "rank"]),
        ):
            expected = expected.filter(expected.column("layer").to_numpy(zero_copy_only=False) == layer)
            columns = [c for c in expected.column_names if c not in ("model", "layer")]
            sort = [(c, "ascending") for c in order]
            assert stored.num_rows == expected.num_rows > 0
            assert stored.select(columns).sort_by(sort).to_pylist() == expected.select(columns).sort_by(sort).to_pylist()
