"""MACO renders in a build: the magnitude spectrum comes from the scan dataset (a spectrum item),
renders are stored as RGBA with the transparency map as alpha, and the viewer serves them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from loupe.jobs.build import run_build
from loupe.jobs.build.config import ConfigError, parse_config
from loupe.jobs.build.plan import SpectrumSpec
from loupe.jobs.build.resolve import resolve_build
from loupe.jobs.build.run import make_plan
from loupe.jobs.build.spectrum_stage import SPECTRUM_PARTIAL
from loupe.jobs.view import create_app
from loupe.pipeline.data.decode import decode_image
from loupe.pipeline.featurevis.spectrum import MagnitudeSpectrum
from loupe.storage import open_atlas

from tests.builds.build_helpers import tiny_config, write_images


def maco_config(tmp_path) -> dict:
    config = tiny_config(str(tmp_path / "atlas"), str(write_images(tmp_path / "images", count=10)))
    config["models"][0]["layers"] = ["layer2"]
    config["render"] = {"channel": {"size": 32, "steps": 6, "units_per_item": 4, "param": "maco"},
                        "negative": {"enabled": True, "size": 32, "steps": 4, "units_per_item": 4},
                        "spectrum_images": 8}
    config["scan"]["examples"] = {"enabled": False}
    return config


def test_maco_renders_use_the_datasets_spectrum_and_store_transparency_as_alpha(tmp_path):
    config = parse_config(maco_config(tmp_path))
    plan = make_plan(config)
    spectra = [item for item in plan.items["r20"] if isinstance(item.spec, SpectrumSpec)]
    assert [(s.spec.size, s.spec.images) for s in spectra] == [(32, 8)]
    renders = [item for item in plan.items["r20"] if item.stage == "render"]
    assert {i.spec.spectrum_item for i in renders if i.spec.kind == "channel"} == {spectra[0].key}
    assert {i.spec.spectrum_item for i in renders if i.spec.kind == "negative"} == {""}

    summary = run_build(config, executor="local", progress=False, log=lambda _: None)
    assert summary.published, summary.failed
    atlas = open_atlas(str(tmp_path / "atlas"))

    saved = tmp_path / "atlas" / "versions" / atlas.version / "partials" / spectra[0].key / SPECTRUM_PARTIAL
    with np.load(saved, allow_pickle=False) as arrays:
        magnitude = MagnitudeSpectrum.from_state(dict(arrays)).result()
    expected = MagnitudeSpectrum(32, 32)
    preprocessing = plan.models[0].model.preprocessing  # images are decoded as the model's input, like scans
    for path in sorted((tmp_path / "images").iterdir())[:8]:
        expected.add(decode_image(path.read_bytes(), preprocessing.input_size, preprocessing.resize_size)[None])
    np.testing.assert_allclose(magnitude, expected.result(), rtol=1e-6)

    for unit in range(4):
        rgba = atlas.render("r20", "layer2", unit, "channel")
        assert rgba.shape == (32, 32, 4) and rgba.dtype == np.uint8
        alpha = rgba[..., 3].astype(np.float32)
        assert alpha.max() == 255 and alpha.std() > 0, "the transparency map is normalized and not flat"
        assert atlas.render("r20", "layer2", unit, "negative").shape == (32, 32, 3), "lucid kinds stay RGB"
    table = atlas.units_table("r20", "layer2").to_pylist()
    assert all(row["fv_activation"] is not None for row in table if row["unit"] < 4)

    with TestClient(create_app(str(tmp_path / "atlas"))) as client:
        unit = client.get("/api/m/r20/layer2/1").json()
        png = client.get(unit["renders"]["channel"][0])
        assert png.status_code == 200
        served = np.asarray(Image.open(io.BytesIO(png.content)))
        assert np.array_equal(served, atlas.render("r20", "layer2", 1, "channel")), "served with its alpha"


def test_maco_without_a_scan_dataset_is_refused_naming_the_field(tmp_path):
    config = maco_config(tmp_path)
    del config["scan"]
    with pytest.raises(ConfigError, match=r"layers\[0\]\.render\.channel\.param: maco needs a scan dataset"):
        resolve_build(parse_config(config), with_weights=False)
