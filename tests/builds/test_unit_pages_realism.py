"""Real weights, real photos: the atlas's stored top crops really are what a unit responds to,
and renders drive their units beyond the dataset's natural maximum."""

from __future__ import annotations

import statistics

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from PIL import Image

from loupe.jobs.build import run_build
from loupe.jobs.build.config import parse_config
from loupe.jobs.build.resolve import resolve_build
from loupe.pipeline.data.decode import decode_image
from loupe.pipeline.models import capture
from loupe.pipeline.scan.layout import as_channels_first
from loupe.storage import open_atlas

pytestmark = [pytest.mark.realism, pytest.mark.slow]

LAYER = "features.7"  # a middle block of MobileNetV2: 64 channels, 14 x 14
UNITS = 32


def realism_config(url: str, photos: str) -> dict:
    return {
        "atlas": {"url": url},
        "models": [{"id": "mobilenet_v2", "source": "torchvision:mobilenet_v2",
                    "weights": "bundled:mobilenet_v2_imagenet", "layers": [LAYER], "units": f"0-{UNITS - 1}"}],
        "render": {"channel": {"size": 96, "steps": 128, "units_per_item": 16}},
        "scan": {"dataset": {"url": photos}, "k": 4, "shards": 2, "images_per_batch": 50, "decode_workers": 2,
                 "examples": {"samples_per_band": 2}},
        "resources": {"cpus_per_actor": 1},
    }


@pytest.fixture(scope="module")
def built(shared_dir, tmp_path_factory):
    url = str(tmp_path_factory.mktemp("realism") / "atlas")
    config = parse_config(realism_config(url, str(shared_dir / "datasets" / "imagenet-sample")))
    summary = run_build(config, executor="local", progress=False, log=lambda _: None)
    assert summary.published, summary.failed
    [model] = resolve_build(config, with_weights=True, device="cpu")
    return open_atlas(url), model


def unit_max(model, pictures: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """The spatial max of each unit on its picture, the picture fed to the model as it is stored."""
    images = torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 255
    out = {}
    with capture(model.model, [LAYER], on_output=lambda n, a: out.update({n: a.detach().clone()})) as cap:
        with torch.inference_mode():
            cap.run(images)
    maps = as_channels_first(out[LAYER], "NCHW").flatten(2).amax(2)
    return maps[torch.arange(len(unit)), torch.from_numpy(unit)].numpy()


def test_top_crops_beat_random_crops_of_other_photos(built, shared_dir):
    atlas, model = built
    photos = sorted((shared_dir / "datasets" / "imagenet-sample").glob("*.JPEG")) or sorted(
        p for p in (shared_dir / "datasets" / "imagenet-sample").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    rng = np.random.default_rng(0)
    units = np.arange(64)
    tops = np.stack([atlas.example_pictures("mobilenet_v2", LAYER, int(u), "top").pictures[0] for u in units])
    table = atlas.examples("mobilenet_v2", LAYER)
    first = {row["unit"]: row for row in table.filter(pc.and_(pc.equal(table.column("kind"), "top"),
                                                             pc.equal(table.column("rank"), 0))).to_pylist()}
    others = []
    for unit in units:
        row = first[int(unit)]
        side = row["crop_input_y1"] - row["crop_input_y0"]
        while True:  # a random photo other than the unit's top one, and a random crop of the same size
            photo = photos[int(rng.integers(len(photos)))]
            if photo.name != row["image_id"]:
                break
        pixels = decode_image(photo.read_bytes(), 224, 256).transpose(1, 2, 0)
        y, x = (int(v) for v in rng.integers(0, 224 - side + 1, size=2))
        crop = Image.fromarray(np.ascontiguousarray(pixels[y:y + side, x:x + side]))
        others.append(np.asarray(crop.resize(tops.shape[1:3], Image.BILINEAR)))
    wins = unit_max(model, tops, units) > unit_max(model, np.stack(others), units)
    print(f"top crop beat a random crop of another photo for {wins.sum()} of {len(units)} units of {LAYER}")
    assert wins.mean() >= 0.9, f"top crop beat a random crop for {wins.sum()} of {len(units)} units"


def test_renders_exceed_the_natural_max(built):
    atlas, _ = built
    units = atlas.units_table("mobilenet_v2", LAYER).to_pylist()
    ratios = [row["fv_natural_ratio"] for row in units if row.get("fv_natural_ratio") is not None]
    assert len(ratios) == UNITS
    print(f"fv_natural_ratio on {LAYER}: median {statistics.median(ratios):.2f}, min {min(ratios):.2f}, "
          f"max {max(ratios):.2f} over {UNITS} units")
    assert statistics.median(ratios) > 1.0, sorted(ratios)
