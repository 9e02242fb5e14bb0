"""Render items end to end: every requested unit is published exactly as rendered, whatever the
unit set (sparse inside a shard) and whichever executor ran the item."""

import json

import numpy as np
import pytest

from loupe.jobs.build import run_build
from loupe.jobs.build.config import ModelConfig, parse_config
from loupe.jobs.build.resolve import build_model
from loupe.pipeline.featurevis import RenderSettings, render_units
from loupe.storage import StorageError, open_atlas

from tests.builds.build_helpers import tiny_config

LAYER = "layer2"  # 32 channels, 8x8 at 32 px


def render_config(url: str, units, render: dict) -> dict:
    config = tiny_config(url, None, render=render)
    config["models"][0].update(layers=[LAYER], units=units)
    return config


def build(config: dict, executor: str = "local", **kwargs):
    summary = run_build(parse_config(config), executor=executor, progress=False, log=lambda _: None, **kwargs)
    assert summary.published and not summary.failed
    return summary


def expected(config: dict, kind: str, units: list[int]):
    """What render_units itself produces for the item's units (the runner renders them in one call)."""
    model = build_model(ModelConfig.model_validate(config["models"][0]), with_weights=True, device="cpu")
    spec = config["render"][kind]
    per_unit = spec.get("images_per_unit", 1) if kind == "diversity" else 1
    settings = RenderSettings(size=spec["size"], steps=spec["steps"], images_per_unit=per_unit)
    renders = render_units(model, LAYER, units, kind, settings, seed=spec.get("seed", 0),
                           images_per_step=len(units) * per_unit)
    images = renders.images.reshape(len(units), *([per_unit] if kind == "diversity" else []), 32, 32, 3)
    return images, renders.activations.reshape(len(units), -1)


@pytest.mark.parametrize(
    ("units", "requested", "absent", "render"),
    [
        ([3, 4, 6], [3, 4, 6], [5, 7, 0],
         {"channel": {"size": 32, "steps": 4, "units_per_item": 8},
          "diversity": {"enabled": True, "size": 32, "steps": 3, "units_per_item": 8, "images_per_unit": 2}}),
        (["0-3", 10], [0, 1, 2, 3, 10], [4, 9, 11],
         {"channel": {"size": 32, "steps": 4, "units_per_item": 16},
          "negative": {"enabled": True, "size": 32, "steps": 3, "units_per_item": 16}}),
    ],
    ids=["3-4-6", "0to3-and-10"],
)
def test_sparse_units_in_one_shard_are_all_published(tmp_path, units, requested, absent, render):
    url = str(tmp_path / "atlas")
    config = render_config(url, units, render)
    build(config)
    atlas = open_atlas(url)
    atlas.verify()
    for kind in render:
        images, objective = expected(config, kind, requested)
        assert atlas.units("r20", LAYER) == requested
        for row, unit in enumerate(requested):
            stored = atlas.render("r20", LAYER, unit, kind=kind)
            assert stored.std() > 0, f"{kind} render of unit {unit} is blank"
            np.testing.assert_array_equal(stored, images[row], err_msg=f"{kind} unit {unit}")
            value = np.atleast_1d(atlas.objective("r20", LAYER, unit, kind=kind))
            assert np.isfinite(value).all()
            np.testing.assert_array_equal(value, objective[row])
        for unit in absent:
            with pytest.raises(StorageError, match=f"unit {unit} has no '{kind}' render"):
                atlas.render("r20", LAYER, unit, kind=kind)


def render_objects(url: str) -> dict[str, str]:
    """Every render object of the published version with its SHA-256 (from its checksums.json)."""
    atlas = open_atlas(url)
    checksums = json.loads(atlas.store.get(f"versions/{atlas.version}/checksums.json"))
    return {path: entry["sha256"] for path, entry in checksums.items() if path.startswith("renders/")}


def test_in_process_and_ray_give_the_same_bytes(tmp_path, local_ray):
    render = {"channel": {"size": 32, "steps": 30, "units_per_item": 4}}
    local_url, ray_url = str(tmp_path / "in-process"), str(tmp_path / "on-ray")
    # The thread counts differ on purpose, as they do by default (all cores in process, num_cpus per actor).
    build(render_config(local_url, "0-3", render), "local", threads=2)
    build(render_config(ray_url, "0-3", render), "ray")  # cpus_per_actor 1: actors run 1 thread
    local, on_ray = render_objects(local_url), render_objects(ray_url)
    assert len(local) == 4 and local == on_ray  # shard, objective chunk and both zarr.json
    # Not vacuous: on this machine the thread count alone changes the pictures.
    model = build_model(ModelConfig.model_validate(render_config("", "0-3", render)["models"][0]),
                        with_weights=True, device="cpu")
    one, two = (render_units(model, LAYER, [0, 1, 2, 3], "channel", RenderSettings(size=32, steps=30, threads=t),
                             images_per_step=4).images for t in (1, 2))
    assert not np.array_equal(one, two)
