"""Small builds for tests: the CIFAR ResNet-20 architecture (random weights), 32 px, a few units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from loupe.storage import StorageError, open_atlas

TINY_MODEL = "loupe.pipeline.models.cifar_resnet:resnet20"


def write_images(folder: Path, count: int = 12, size: int = 40, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index:03d}.png")
    return folder


def tiny_config(atlas_url: str, dataset: str | None, **overrides) -> dict:
    config = {
        "atlas": {"url": atlas_url},
        "models": [{
            "id": "r20",
            "source": TINY_MODEL,
            "weights": "none",
            "layers": ["layer1.0.bn1", "layer2"],
            "units": "0-3",
        }],
        "render": {
            "channel": {"size": 32, "steps": 3, "units_per_item": 2},
            "negative": {"enabled": True, "size": 32, "steps": 3, "units_per_item": 4},
        },
        "resources": {"cpus_per_actor": 1, "max_retries": 2},
    }
    if dataset is not None:
        config["scan"] = {"dataset": {"url": dataset}, "k": 3, "shards": 2, "images_per_batch": 4, "decode_workers": 0}
    for key, value in overrides.items():
        config[key] = value
    return config


def save_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def atlas_snapshot(url: str, storage_options: dict | None = None) -> dict:
    """Everything a viewer reads from the published version, as plain comparable values."""
    atlas = open_atlas(url, storage_options=storage_options)
    snapshot = {}
    for model in atlas.models():
        for layer in atlas.layer_keys(model):
            for kind in atlas.kinds(model, layer):
                units, images = atlas.layer_renders(model, layer, kind)
                snapshot[(model, layer, kind)] = (units.tolist(), images.tobytes())
            try:
                units, examples = atlas.units_table(model, layer), atlas.examples(model, layer)
            except StorageError:  # a build without a scan has no tables
                units = examples = None
            snapshot[(model, layer, "units")] = units.sort_by("unit").to_pylist() if units is not None else None
            snapshot[(model, layer, "examples")] = (
                examples.sort_by([("unit", "ascending"), ("kind", "ascending"), ("rank", "ascending")]).to_pylist()
                if examples is not None else None
            )
            try:
                snapshot[(model, layer, "max")] = atlas.activations(model, layer, "max")[:].tobytes()
            except Exception:
                snapshot[(model, layer, "max")] = None
    return snapshot
