"""benchmarks/atlas_cost.py accounts for every object of a real atlas, and its projection to the
measured atlas's own size gives back the measured bytes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from loupe.jobs.build import run_build
from loupe.jobs.build.config import parse_config
from loupe.storage import layout, open_atlas
from tests.builds.build_helpers import tiny_config, write_images

REPO = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("atlas_cost", REPO / "benchmarks" / "atlas_cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def atlas_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("cost")
    config = tiny_config(str(root / "atlas"), str(write_images(root / "images", count=8)))
    run_build(parse_config(config), executor="local", progress=False, log=lambda _: None)
    return str(root / "atlas")


def test_every_object_is_counted_once_and_a_same_size_projection_gives_the_measured_bytes(atlas_url):
    cost = load_script()
    atlas = open_atlas(atlas_url)
    files = atlas.store.list_files(layout.version_dir(atlas.version))
    layers = sum(len(entry) for entry in atlas.manifest["layers"].values())
    same = cost.Target(units=atlas.manifest["counts"]["units"], images=atlas.manifest["counts"]["images"],
                       layers=layers, shards=2, units_per_item=2)
    families, setting = cost.measure(atlas_url, same)
    assert sum(f.objects for f in families.values()) == len(files)
    assert sum(f.bytes for f in families.values()) == sum(files.values())
    assert setting["scan shards"] == 2 and setting["render kinds"] == 2
    for name in ("activations", "unit tables", "images table", "partials"):
        assert families[name].projected_bytes() == pytest.approx(families[name].bytes), name
    doubled = cost.measure(atlas_url, cost.Target(units=same.units, images=2 * same.images, layers=layers,
                                                  shards=2, render_size=64))[0]
    assert doubled["activations"].projected_bytes() == pytest.approx(2 * families["activations"].bytes)
    assert doubled["renders"].area_ratio == pytest.approx(4.0), "32 px renders projected to 64 px: 4x the pixels"


def test_the_script_prints_a_projection(atlas_url):
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "atlas_cost.py"), atlas_url],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert "projection: 5,808 units in 12 layers over 1,281,167 images" in run.stdout
    assert "pooled activations (max, mean)" in run.stdout and "total" in run.stdout
