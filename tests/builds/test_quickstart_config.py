"""The quickstart builds real (bundled) MobileNetV2 features offline; the manifest says how inputs were normalized."""

import warnings
from pathlib import Path

from loupe.jobs.build import run_build
from loupe.jobs.build.config import RENDER_KINDS, load_config, parse_config
from loupe.jobs.build.resolve import resolve_build
from loupe.pipeline.models import AssumedPreprocessingWarning
from loupe.storage import open_atlas

from tests.builds.build_helpers import tiny_config, write_images

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_quickstart_resolves_bundled_mobilenet_with_every_kind_and_no_warning():
    config = load_config(CONFIGS / "quickstart.yaml")
    (model_config,) = config.models
    assert model_config.source == "torchvision:mobilenet_v2"
    assert model_config.weights == "bundled:mobilenet_v2_imagenet"
    assert config.scan is not None and config.scan.dataset.url.endswith("data/sample-images")
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssumedPreprocessingWarning)
        (resolved,) = resolve_build(config, with_weights=True, device="cpu")
    assert resolved.model.notes == ()
    assert resolved.model.preprocessing.mean == (0.5, 0.5, 0.5)
    assert len(resolved.layers) == 3
    for layer in resolved.layers:
        assert sorted(layer.render) == sorted(RENDER_KINDS)
        assert layer.units == list(range(8))


def test_pretrained_googlenet_variant_keeps_torchvision_default_weights():
    config = load_config(CONFIGS / "quickstart-pretrained.yaml")
    (model_config,) = config.models
    assert (model_config.source, model_config.weights) == ("torchvision:googlenet", "DEFAULT")
    resolve_build(config, with_weights=False, device="cpu")  # architecture and layers check offline


def test_published_manifest_records_the_preprocessing_used(tmp_path):
    url = str(tmp_path / "atlas")
    raw = tiny_config(url, str(write_images(tmp_path / "images", count=4)))
    raw["models"][0]["preprocessing"] = {"range": [-1, 1], "input_size": 32, "resize_size": 36}
    raw["render"] = {"channel": {"size": 32, "steps": 2, "units_per_item": 4}}
    summary = run_build(parse_config(raw), executor="local", progress=False, log=lambda _: None)
    assert summary.published
    recorded = open_atlas(url).manifest["models"]["r20"]["preprocessing"]
    assert recorded == {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "input_size": 32, "resize_size": 36}
