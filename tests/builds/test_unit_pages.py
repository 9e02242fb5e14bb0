"""A built atlas holds everything a unit page shows: example pictures equal to crops cut by hand
from the decoded input, heat maps equal to the unit's activations, band samples inside their
bands, histograms, scores; and all of it is the same for any sharding of the scan."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from PIL import Image

from loupe.jobs.build import run_build
from loupe.jobs.build.config import parse_config
from loupe.jobs.build.resolve import resolve_build
from loupe.jobs.build.scan_stage import unit_facts
from loupe.pipeline.data.decode import decode_image
from loupe.pipeline.models import capture
from loupe.pipeline.scan.layout import as_channels_first
from loupe.storage import open_atlas

from tests.builds.build_helpers import tiny_config

LAYERS = ("layer1.0.bn1", "layer2")
SIZES = [(40, 40), (52, 40), (40, 64), (37, 90), (80, 45), (44, 44), (60, 38), (39, 41), (70, 70), (40, 55), (48, 36)]


def write_varied_images(folder: Path) -> Path:
    """Non-square images of several sizes, with structure (so units have distinct top examples)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for index, (height, width) in enumerate(SIZES):
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([np.sin(xx / (3 + index)), np.cos(yy / (2 + index % 4)), np.sin((xx + yy) / 5.0)], -1)
        pixels = ((base + 1) * 100 + rng.integers(0, 50, (height, width, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index:03d}.png")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_varied_images(tmp_path_factory.mktemp("unit-pages") / "images")


def page_config(url: Path, images: Path, shards: int) -> dict:
    config = tiny_config(str(url), str(images))
    config["render"] = {"channel": {"size": 32, "steps": 3, "units_per_item": 4}}
    config["scan"].update(shards=shards, k=3, examples={
        "example_size": 20, "heatmap_size": 6, "quantiles": [0, 0.5, 1], "samples_per_band": 2,
        "histogram_bins": 5, "units_per_item": 8})
    return config


def build(config: dict):
    summary = run_build(parse_config(config), executor="local", progress=False, log=lambda _: None)
    assert summary.published, summary.failed
    return summary


@pytest.fixture(scope="module")
def atlases(tmp_path_factory, images):
    root = tmp_path_factory.mktemp("atlases")
    urls = {}
    for shards in (1, 3):
        config = page_config(root / f"atlas{shards}", images, shards)
        build(config)
        urls[shards] = root / f"atlas{shards}"
    return urls, page_config(root / "atlas1", images, 1)


RESIZE = 32  # the CIFAR ResNet-20's preprocessing: shorter side to 32, centre crop 32


def decoded(images: Path, image_id: str, size: int = 32, resize: int = RESIZE) -> np.ndarray:
    return decode_image((images / image_id).read_bytes(), size, resize).transpose(1, 2, 0)


def test_pictures_are_the_crops_cut_from_the_decoded_input(atlases, images):
    urls, _ = atlases
    atlas = open_atlas(str(urls[1]))
    for layer in LAYERS:
        table = atlas.examples("r20", layer)
        assert table.num_rows > 0
        for unit in (0, 5):
            rows = table.filter(pc.equal(table.column("unit"), unit)).to_pylist()
            for kind in ("top", "bottom"):
                stored = atlas.example_pictures("r20", layer, unit, kind)
                for row in (r for r in rows if r["kind"] == kind):
                    box = [row[f"crop_input_{n}"] for n in ("y0", "x0", "y1", "x1")]
                    assert box[2] - box[0] == box[3] - box[1], "crops are square"
                    field = [row[f"field_{n}"] for n in ("y0", "x0", "y1", "x1")]
                    assert box[0] <= field[0] and box[1] <= field[1] and field[2] <= box[2] and field[3] <= box[3]
                    crop = Image.fromarray(decoded(images, row["image_id"])[box[0]:box[2], box[1]:box[3]])
                    expected = np.asarray(crop.resize((20, 20), Image.BILINEAR))
                    assert np.array_equal(stored.pictures[row["rank"]], expected), (layer, unit, kind, row["rank"])


def test_crop_boxes_in_the_original_image_frame(atlases, images):
    urls, _ = atlases
    table = open_atlas(str(urls[1])).examples("r20", "layer2")
    for row in table.to_pylist()[:20]:
        width, height = Image.open(images / row["image_id"]).size
        assert (row["image_height"], row["image_width"]) == (height, width)
        scale = min(width, height) / RESIZE  # original pixels per resized pixel
        resized_h, resized_w = (int(RESIZE * height / width), RESIZE) if width <= height else (RESIZE, int(RESIZE * width / height))
        top, left = round((resized_h - 32) / 2.0), round((resized_w - 32) / 2.0)
        y0 = (row["crop_input_y0"] + top) * height / resized_h
        x1 = (row["crop_input_x1"] + left) * width / resized_w
        assert math.isclose(row["crop_image_y0"], y0, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(row["crop_image_x1"], x1, rel_tol=1e-9, abs_tol=1e-9)
        assert 0 <= row["crop_image_y0"] < row["crop_image_y1"] <= height + scale


def test_heat_maps_equal_the_units_activations(atlases, images):
    urls, config = atlases
    atlas = open_atlas(str(urls[1]))
    [model] = resolve_build(parse_config(config), with_weights=True, device="cpu")
    for layer in LAYERS:
        table = atlas.examples("r20", layer)
        top = table.filter(pc.and_(pc.equal(table.column("kind"), "top"), pc.equal(table.column("rank"), 0)))
        for row in top.to_pylist()[:6]:
            image = torch.from_numpy(decoded(images, row["image_id"]).transpose(2, 0, 1).copy())[None].float() / 255
            maps = {}
            with capture(model.model, [layer], on_output=lambda n, a: maps.update({n: a.detach().clone()})) as cap:
                with torch.inference_mode():
                    cap.run(image)
            unit_map = as_channels_first(maps[layer], "NCHW")[0, row["unit"]].float().numpy()
            assert math.isclose(float(unit_map.max()), row["value"], rel_tol=1e-4, abs_tol=1e-5)
            heat = atlas.example_pictures("r20", layer, row["unit"], "top").heatmaps[0].astype(np.float32)
            y0, x0, y1, x1 = (row[f"crop_input_{n}"] for n in ("y0", "x0", "y1", "x1"))
            rows_, cols_ = unit_map.shape
            expected = np.empty((6, 6), np.float32)
            for i in range(6):
                for j in range(6):
                    py, px = y0 + (i + 0.5) * (y1 - y0) / 6, x0 + (j + 0.5) * (x1 - x0) / 6
                    expected[i, j] = unit_map[min(int(py * rows_ / 32), rows_ - 1), min(int(px * cols_ / 32), cols_ - 1)]
            assert np.allclose(heat, expected, rtol=2e-3, atol=2e-3), (layer, row["unit"])


def test_band_samples_fall_in_their_bands_and_have_pictures(atlases, images):
    urls, _ = atlases
    atlas = open_atlas(str(urls[1]))
    maxima = atlas.activations("r20", "layer2", "max")[:].astype(np.float64)
    samples = atlas.samples("r20", "layer2")
    assert samples.num_rows > 0
    for row in samples.to_pylist():
        last = row["band"] == 1
        assert row["band_low"] <= row["value"] and (row["value"] < row["band_high"] or (last and row["value"] == row["band_high"]))
        assert row["value"] == maxima[row["image_index"], row["unit"]]
    unit0 = samples.filter(pc.equal(samples.column("unit"), 0)).to_pylist()
    pictures = atlas.example_pictures("r20", "layer2", 0, "samples")
    for row in unit0:
        slot = row["band"] * 2 + row["slot"]
        box = [row[f"crop_input_{n}"] for n in ("y0", "x0", "y1", "x1")]
        crop = Image.fromarray(decoded(images, row["image_id"])[box[0]:box[2], box[1]:box[3]])
        assert np.array_equal(pictures.pictures[slot], np.asarray(crop.resize((20, 20), Image.BILINEAR)))
    histogram = atlas.histogram("r20", "layer2", 0)
    assert histogram.num_rows == 5
    finite = maxima[:, 0][np.isfinite(maxima[:, 0])]
    assert sum(histogram.column("count").to_pylist()) == len(finite)


def test_the_same_unit_pages_for_any_sharding(atlases):
    urls, _ = atlases
    one, three = open_atlas(str(urls[1])), open_atlas(str(urls[3]))
    for layer in LAYERS:
        for unit in (0, 3, 7):
            for kind in ("top", "bottom", "samples"):
                a, b = one.example_pictures("r20", layer, unit, kind), three.example_pictures("r20", layer, unit, kind)
                assert np.array_equal(a.pictures, b.pictures)
                assert np.array_equal(a.heatmaps, b.heatmaps, equal_nan=True)
        assert one.samples("r20", layer).sort_by([("unit", "ascending"), ("band", "ascending"), ("slot", "ascending")]).equals(
            three.samples("r20", layer).sort_by([("unit", "ascending"), ("band", "ascending"), ("slot", "ascending")]))
        assert one.histograms("r20", layer).sort_by([("unit", "ascending"), ("bin", "ascending")]).equals(
            three.histograms("r20", layer).sort_by([("unit", "ascending"), ("bin", "ascending")]))


def test_scores_in_the_units_table(atlases):
    urls, _ = atlases
    units = open_atlas(str(urls[1])).units_table("r20", "layer2").to_pylist()
    assert [row["unit"] for row in units] == sorted({row["unit"] for row in units}), "one row per unit"
    rendered = [row for row in units if row.get("fv_activation") is not None]
    assert [row["unit"] for row in rendered] == [0, 1, 2, 3]
    for row in rendered:
        if row["max_max"] > 0:
            assert math.isclose(row["fv_natural_ratio"], row["fv_activation"] / row["max_max"], rel_tol=1e-12)
            assert math.isclose(row["fv_natural_ratio_p99"], row["fv_activation"] / row["max_p99"], rel_tol=1e-12)
        assert row["fv_robustness"] is None or math.isfinite(row["fv_robustness"])
    assert all(isinstance(row["dead"], bool) for row in units)


def test_dead_units_and_class_labels():
    import pyarrow as pa

    class Model:
        categories = ["cat", "dog", "eel"]

    table = pa.table({"unit": pa.array([0, 1, 2], pa.int32()), "images": [5, 5, 0], "max_max": [1.0, -0.5, np.nan],
                      "max_min": [0.1, -2.0, np.nan]})
    facts = unit_facts(table, "logits", Model())
    assert facts.column("dead").to_pylist() == [False, True, False]
    assert facts.column("label").to_pylist() == ["cat", "dog", "eel"]
    constant = unit_facts(pa.table({"unit": [0], "images": [3], "max_max": [0.7], "max_min": [0.7]}), "layer2", Model())
    assert constant.column("dead").to_pylist() == [True] and "label" not in constant.column_names
