"""The build end to end in this process (no Ray): complete, incremental, resumable, and safe."""

import time

import numpy as np
import pytest

from loupe.jobs.build import run_build
from loupe.jobs.build.config import parse_config
from loupe.storage import StorageError, list_versions, open_atlas

from tests.builds.build_helpers import atlas_snapshot, tiny_config, write_images


def build(config_dict, **kwargs):
    return run_build(parse_config(config_dict), executor="local", progress=False, log=lambda _: None, **kwargs)


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "images", count=10)


def test_build_publishes_a_complete_atlas(tmp_path, images):
    url = str(tmp_path / "atlas")
    summary = build(tiny_config(url, str(images)))
    assert summary.published and not summary.failed
    assert summary.units_rendered == 2 * 2 * 4 and summary.images_scanned == 10
    assert any("RANDOM weights" in note for note in summary.notes)
    atlas = open_atlas(url)
    assert atlas.models() == ["r20"]
    assert sorted(atlas.layers("r20")) == ["layer1.0.bn1", "layer2"]
    assert sorted(atlas.kinds("r20", "layer2")) == ["channel", "negative"]
    render = atlas.render("r20", "layer2", 3, kind="negative")
    assert render.shape == (32, 32, 3) and render.dtype == np.uint8 and render.std() > 0
    examples = atlas.examples("r20", "layer2", unit=1)
    assert sorted(set(examples.column("kind").to_pylist())) == ["bottom", "top"]
    assert examples.num_rows == 2 * 3
    stats = atlas.stats("r20", "layer1.0.bn1", 0)
    assert stats["images"] == 10 and stats["max_max"] >= stats["max_p50"] >= stats["max_min"]
    assert atlas.activations("r20", "layer2", "max").shape == (10, 32)
    assert atlas.images().num_rows == 10


def test_rebuild_with_nothing_changed_does_nothing(tmp_path, images):
    url = str(tmp_path / "atlas")
    first = build(tiny_config(url, str(images)))
    started = time.perf_counter()
    again = build(tiny_config(url, str(images)))
    assert again.unchanged and again.version == first.version
    assert again.done == 0 and again.units_rendered == 0 and again.images_scanned == 0
    assert time.perf_counter() - started < 30
    assert len(list_versions(url)) == 1


def test_changing_one_layer_redoes_only_that_layer(tmp_path, images):
    url = str(tmp_path / "atlas")
    build(tiny_config(url, str(images)))
    changed = tiny_config(url, str(images))
    changed["models"][0]["layers"] = ["layer1.0.bn1", {"name": "layer2", "render": {"channel": {"steps": 4}}}]
    summary = build(changed)
    assert summary.published
    assert summary.done == 3  # layer2's two channel blocks and its score item; everything else is reused
    assert summary.units_rendered == 4 and summary.images_scanned == 0
    fresh_url = str(tmp_path / "fresh")
    changed["atlas"]["url"] = fresh_url
    build(changed)
    assert atlas_snapshot(url) == atlas_snapshot(fresh_url)


def test_corrupt_images_are_skipped_and_counted(tmp_path, images):
    (images / "img003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (images / "img007.png").write_bytes(b"")
    url = str(tmp_path / "atlas")
    summary = build(tiny_config(url, str(images)))
    assert summary.published and summary.skipped_images == 2 and summary.images_scanned == 8
    assert open_atlas(url).stats("r20", "layer2", 0)["images"] == 8


def test_unreachable_storage_fails_before_any_compute(tmp_path, images):
    config = tiny_config("s3://loupe-nowhere/atlas", str(images))
    config["atlas"]["storage_options"] = {
        "key": "x", "secret": "y",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
    }
    started = time.perf_counter()
    with pytest.raises(StorageError, match="s3://loupe-nowhere/atlas"):
        build(config)
    assert time.perf_counter() - started < 60


def test_missing_dataset_is_named_before_any_compute(tmp_path):
    from loupe.pipeline.data import DatasetError

    url = str(tmp_path / "atlas")
    with pytest.raises(DatasetError, match="no-such-folder"):
        build(tiny_config(url, str(tmp_path / "no-such-folder")))
    assert list_versions(url) == []


def test_build_on_s3(tmp_path, images, s3_bucket, s3_options):
    url = f"s3://{s3_bucket}/atlases/tiny"
    config = tiny_config(url, str(images))
    config["atlas"]["storage_options"] = s3_options
    summary = build(config)
    assert summary.published
    local_url = str(tmp_path / "local")
    build(tiny_config(local_url, str(images)))
    assert atlas_snapshot(url, s3_options) == atlas_snapshot(local_url)


def test_a_failing_item_blocks_publishing_and_a_rerun_finishes(tmp_path, images, monkeypatch):
    from loupe.jobs.build.runner import ItemRunner

    url = str(tmp_path / "atlas")
    original = ItemRunner._render

    def flaky(self, item):
        if item.spec.layer == "layer2" and item.spec.kind == "negative":
            raise OSError("simulated lost connection")
        return original(self, item)

    monkeypatch.setattr(ItemRunner, "_render", flaky)
    failed = build(tiny_config(url, str(images)))
    assert not failed.published and len(failed.failed) == 1
    assert [v.status for v in list_versions(url)] == ["building"]
    monkeypatch.setattr(ItemRunner, "_render", original)
    rerun = build(tiny_config(url, str(images)))
    assert rerun.published and rerun.done == 1 and rerun.version == failed.version
    assert atlas_snapshot(url)[("r20", "layer2", "negative")][0] == [0, 1, 2, 3]


def test_a_compiled_render_build_equals_the_eager_one_and_redoes_nothing(tmp_path):
    """render.<kind>.compile is speed only: a build compiled with torch.compile stores the eager
    build's pictures (within float rounding) and a rebuild that only turns compiling on is a no-op."""
    import torch._dynamo

    def config(url: str, compile: str) -> dict:
        built = tiny_config(url, None)
        built["render"] = {"channel": {"size": 32, "steps": 20, "units_per_item": 4, "compile": compile}}
        return built

    eager_url, compiled_url = str(tmp_path / "eager"), str(tmp_path / "compiled")
    build(config(eager_url, "off"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        build(config(compiled_url, "default"))
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2, "one graph per rendered layer"
    finally:
        torch._dynamo.reset()
    eager, compiled = atlas_snapshot(eager_url), atlas_snapshot(compiled_url)
    assert eager.keys() == compiled.keys()
    for key, value in eager.items():
        if key[2] != "channel":
            continue
        units, images = value
        assert compiled[key][0] == units
        difference = np.abs(np.frombuffer(images, np.uint8).astype(np.int16) - np.frombuffer(compiled[key][1], np.uint8))
        assert difference.mean() <= 0.5, key
    assert build(config(eager_url, "default")).unchanged


def test_a_build_scanning_with_device_decode_finds_the_same_examples(tmp_path):
    """scan.decode: device (torchvision's JPEG decoder on the model's device; the CPU here) scans
    JPEGs into the same top-k as Pillow, with statistics within a grey level's worth."""
    from PIL import Image

    folder = tmp_path / "jpegs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for index in range(10):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((64, 48), Image.BILINEAR).save(folder / f"img{index:03d}.jpg", quality=90)
    summaries, atlases = {}, {}
    for decode in ("pillow", "device"):
        config = tiny_config(str(tmp_path / decode), str(folder))
        config["render"] = {"channel": {"enabled": False}}
        config["scan"].update(decode=decode)
        summaries[decode] = build(config)
        atlases[decode] = open_atlas(str(tmp_path / decode))
    for layer in ("layer1.0.bn1", "layer2"):
        pillow, device = (atlases[d].examples("r20", layer).sort_by([("unit", "ascending"), ("kind", "ascending"),
                                                                      ("rank", "ascending")]) for d in atlases)
        assert device.column("image_id").to_pylist() == pillow.column("image_id").to_pylist()
        np.testing.assert_allclose(device.column("value").to_numpy(), pillow.column("value").to_numpy(),
                                   rtol=0.02, atol=0.02)
        for unit in range(4):  # example pictures are cut from the pixels the scan saw
            top = atlases["device"].example_pictures("r20", layer, unit, "top")
            reference = atlases["pillow"].example_pictures("r20", layer, unit, "top")
            assert np.abs(top.pictures.astype(np.int16) - reference.pictures).mean() < 1.0
