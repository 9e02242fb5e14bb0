"""Scan reduces run one per layer, streamed shard by shard: the tables do not depend on how the
dataset was sharded, exactly one reduce writes the images table, and a reduce holds at most one
shard's partial besides its running result."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest

from loupe.jobs.build import run_build
from loupe.jobs.build.config import parse_config
from loupe.jobs.build.plan import ReduceSpec
from loupe.jobs.build.run import make_plan
from loupe.pipeline.scan import ScanResult
from loupe.storage import open_atlas

from tests.builds.build_helpers import tiny_config, write_images

LAYERS = ("layer1.0.bn1", "layer2")


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "images", count=10)


def scan_config(url: Path, images: Path, shards: int) -> dict:
    config = tiny_config(str(url), str(images))
    config["render"] = {"channel": {"enabled": False}}
    config["scan"]["shards"] = shards
    return config


def build(config: dict):
    return run_build(parse_config(config), executor="local", progress=False, log=lambda _: None)


def table_files(url: Path, kind: str) -> dict[str, bytes]:
    """Each partition's Parquet bytes (file names hold the reduce's item key, which names the shards)."""
    [version] = [p for p in (url / "versions").iterdir() if p.is_dir()]
    folder = version / "tables" / kind
    files = sorted(folder.rglob("*.parquet"))
    assert len({p.parent for p in files}) == len(files), "one part file per partition"
    return {str(p.parent.relative_to(folder)): p.read_bytes() for p in files}


def test_one_reduce_per_layer_and_one_images_writer(tmp_path, images):
    second = tiny_config(str(tmp_path / "atlas"), str(images))["models"][0] | {"id": "r20b"}
    config = scan_config(tmp_path / "atlas", images, shards=3)
    config["models"].append(second)
    plan = make_plan(parse_config(config), device="cpu")
    reduces = [i.spec for items in plan.items.values() for i in items if i.stage == "reduce"]
    assert all(isinstance(s, ReduceSpec) for s in reduces)
    assert sorted((s.layer, s.layer_index) for s in reduces) == sorted([(l, i) for i, l in enumerate(LAYERS)] * 2)
    assert all(len(s.scan_items) == 3 for s in reduces)
    assert sum(s.write_images for s in reduces) == 1


def test_tables_are_byte_identical_for_two_and_five_shards(tmp_path, images):
    a, b = tmp_path / "two", tmp_path / "five"
    assert build(scan_config(a, images, shards=2)).published
    assert build(scan_config(b, images, shards=5)).published
    for kind in ("units", "examples", "images"):
        files = table_files(a, kind)
        assert files and files == table_files(b, kind), kind
    atlas = open_atlas(str(a))
    assert atlas.images().num_rows == 10
    for layer in LAYERS:
        units = atlas.units_table("r20", layer).column("unit").to_pylist()
        assert sorted(units) == list(range(len(units))) and units  # every channel of the layer, once
        assert atlas.examples("r20", layer).num_rows > 0


def test_a_reduce_holds_at_most_one_loaded_partial(tmp_path, images, monkeypatch):
    loaded: list[weakref.ref] = []
    alive_at_load: list[int] = []
    original = ScanResult.from_state.__func__

    def tracked(cls, state):
        gc.collect()
        alive_at_load.append(sum(ref() is not None for ref in loaded))
        result = original(cls, state)
        loaded.append(weakref.ref(result))
        return result

    monkeypatch.setattr(ScanResult, "from_state", classmethod(tracked))
    assert build(scan_config(tmp_path / "atlas", images, shards=5)).published
    assert len(alive_at_load) == 5 * len(LAYERS)  # every layer's partial of every shard, once
    assert max(alive_at_load) <= 1, alive_at_load  # all at once would hold up to 4 when the 5th loads


def test_scan_workers_read_only_their_rows_of_the_listing(tmp_path, images, monkeypatch):
    from loupe.jobs.build import scan_stage
    from loupe.storage.build_state import BuildState

    ranges: list[tuple[int, int]] = []
    whole: list[str] = []
    rows, listing = BuildState.get_listing_rows, scan_stage._listing

    def tracked_rows(self, fingerprint, start, stop, **kwargs):
        ranges.append((start, stop))
        return rows(self, fingerprint, start, stop, **kwargs)

    def tracked_whole(runner, fingerprint):
        whole.append(fingerprint)
        return listing(runner, fingerprint)

    monkeypatch.setattr(BuildState, "get_listing_rows", tracked_rows)
    monkeypatch.setattr(scan_stage, "_listing", tracked_whole)
    config = scan_config(tmp_path / "atlas", images, shards=5)
    config["scan"]["examples"] = {"enabled": False}  # pictures read listing windows in the reduce: not a scan worker
    plan = make_plan(parse_config(config), device="cpu")
    shards = sorted((i.spec.start, i.spec.stop) for items in plan.items.values() for i in items if i.stage == "scan")
    assert build(config).published
    assert sorted(ranges) == shards and len(shards) > 1
    assert len(whole) == 1  # only the reduce that writes the images table reads the whole listing


def test_a_partial_of_another_layer_fails_that_layers_reduce_naming_it(tmp_path, images, monkeypatch):
    import json

    from loupe.jobs.build import scan_stage
    from loupe.storage.checksums import canonical_json, entry

    def no_reduce(runner, item):
        raise OSError("simulated crash before the reduce")

    url = tmp_path / "atlas"
    monkeypatch.setattr(scan_stage, "_run_reduce", no_reduce)
    first = build(scan_config(url, images, shards=2))
    assert not first.published
    monkeypatch.undo()
    version = url / "versions" / first.version
    [partial, *_] = sorted(version.glob(f"partials/scan-*/{scan_stage.partial_name(0)}"))
    swapped = (partial.parent / scan_stage.partial_name(1)).read_bytes()  # layer 2's statistics
    partial.write_bytes(swapped)  # a consistent record: only the content is wrong
    record_path = version / "items" / f"{partial.parent.name}.json"
    record = json.loads(record_path.read_text())
    record["objects"][f"partials/{partial.parent.name}/{partial.name}"] = entry(swapped)
    record_path.write_bytes(canonical_json(record))
    lines: list[str] = []
    second = run_build(parse_config(scan_config(url, images, shards=2)), executor="local", progress=False,
                       log=lines.append)
    assert not second.published and len(second.failed) == 1
    [failure] = [line for line in lines if "failed" in line and "reduce-" in line]
    assert str(partial) in failure and f"expected only '{LAYERS[0]}'" in failure


def test_a_listing_saved_without_blocks_is_still_read_whole(tmp_path, images):
    """Atlases whose listing an older Loupe saved (no blocks) keep building: workers slice the whole listing."""
    import shutil

    url = tmp_path / "atlas"
    assert build(scan_config(url, images, shards=2)).published
    [blocks] = (url / "build-state" / "listings").glob("*.blocks-*")
    shutil.rmtree(blocks)
    config = scan_config(url, images, shards=2)
    config["scan"]["k"] = 2  # new scan items: the listing is read again
    assert build(config).published
    assert not list((url / "build-state" / "listings").glob("*.blocks-*"))  # the saved listing was reused as is
    assert open_atlas(str(url)).examples("r20", LAYERS[0]).column("rank").to_pylist()
