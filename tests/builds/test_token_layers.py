"""Token layers (NLC, a ViT's encoder blocks) build like feature maps: channels, neurons (a token
position) and directions render, scan, and get example pictures, in any basis."""

from __future__ import annotations

import numpy as np

from loupe.jobs.build import run_build
from loupe.jobs.build.config import parse_config
from loupe.storage import open_atlas

from tests.builds.build_helpers import write_images

BLOCK = "encoder.layers.encoder_layer_1"


def test_a_vit_block_builds_in_channels_and_in_a_directions_basis(tmp_path):
    directions = np.random.default_rng(0).standard_normal((6, 32)).astype(np.float32)
    np.save(tmp_path / "dirs.npy", directions)
    config = {
        "atlas": {"url": str(tmp_path / "atlas")},
        "models": [{"id": "vit", "source": "tests.builds.tiny_vit:tiny_vit", "weights": "none",
                    "preprocessing": {"range": [-1, 1], "input_size": 32, "resize_size": 32},
                    "layers": [{"name": BLOCK, "units": "0-3",
                                "bases": [{"name": "dirs", "url": str(tmp_path / "dirs.npy"), "units": "0-5"}]}]}],
        "render": {"channel": {"size": 32, "steps": 4, "units_per_item": 4},
                   "neuron": {"enabled": True, "size": 32, "steps": 4, "units_per_item": 4},
                   "diversity": {"enabled": True, "size": 32, "steps": 3, "units_per_item": 4, "images_per_unit": 2}},
        "scan": {"dataset": {"url": str(write_images(tmp_path / "images", count=9, size=40))}, "k": 3, "shards": 2,
                 "images_per_batch": 4, "decode_workers": 0,
                 "examples": {"example_size": 16, "heatmap_size": 4, "quantiles": [0, 0.5, 1], "samples_per_band": 1,
                              "histogram_bins": 4}},
        "resources": {"cpus_per_actor": 1, "max_retries": 0},
    }
    summary = run_build(parse_config(config), executor="local", progress=False, log=lambda _: None)
    assert summary.published, summary.failed
    atlas = open_atlas(str(tmp_path / "atlas"))
    assert atlas.bases("vit", BLOCK) == ["channels", "dirs"]
    for basis, width in (("channels", 32), ("dirs", 6)):
        assert sorted(atlas.kinds("vit", BLOCK, basis=basis)) == ["channel", "diversity", "neuron"]
        for kind in ("channel", "neuron"):
            picture = atlas.render("vit", BLOCK, 1, kind, basis=basis)
            assert picture.shape == (32, 32, 3) and picture.std() > 0
        assert atlas.render("vit", BLOCK, 2, "diversity", basis=basis).shape == (2, 32, 32, 3)
        table = atlas.units_table("vit", BLOCK, basis=basis)
        assert table.num_rows == width and table.column("max_max").null_count == 0
        pictures = atlas.example_pictures("vit", BLOCK, 0, "top", basis=basis)
        assert pictures.pictures.shape == (3, 16, 16, 3) and np.isfinite(pictures.heatmaps.astype(np.float32)).all()
        positions = atlas.examples("vit", BLOCK, basis=basis).column("position").to_numpy()
        assert positions.min() >= 0 and positions.max() <= 16, "positions index the 17 tokens (class token first)"
