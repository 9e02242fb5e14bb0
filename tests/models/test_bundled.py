"""Bundled weights: shipped in the package, named `bundled:<name>`, loaded strictly with their preprocessing."""

import tomllib
import warnings
from pathlib import Path

import pytest
import torch

from loupe.pipeline.errors import WeightsError
from loupe.pipeline.models import (
    BUNDLED,
    AssumedPreprocessingWarning,
    Preprocessing,
    bundled_weights,
    load_model,
)
from loupe.pipeline.models.bundled import PRETRAINED_DIR

BUNDLED_MOBILENET = "bundled:mobilenet_v2_imagenet"
ROOT = Path(__file__).resolve().parents[2]


def load_quietly(source: str, weights: str, **kwargs):
    """Load with AssumedPreprocessingWarning turned into an error, so a stray warning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssumedPreprocessingWarning)
        return load_model(source, weights, device="cpu", **kwargs)


def test_bundled_file_is_a_plain_float16_state_dict_with_its_licence():
    entry = bundled_weights(BUNDLED_MOBILENET)
    state = torch.load(entry.path, map_location="cpu", weights_only=True)
    floats = [t for t in state.values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    assert 6_000_000 < entry.path.stat().st_size < 8_000_000
    assert "Apache License" in (PRETRAINED_DIR / "LICENSE.Apache-2.0.txt").read_text()
    assert entry.path.name in (PRETRAINED_DIR / "README.md").read_text()


def test_bundled_weights_load_strictly_as_float32_with_declared_preprocessing_and_classes():
    model = load_quietly("torchvision:mobilenet_v2", BUNDLED_MOBILENET)
    assert model.notes == ()
    assert model.weights == BUNDLED_MOBILENET
    assert all(p.dtype == torch.float32 for p in model.module.parameters())
    assert model.preprocessing == Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=224, resize_size=256)
    assert len(model.categories) == 1000 and model.categories[0] == "tench"
    state = torch.load(bundled_weights(BUNDLED_MOBILENET).path, weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    assert torch.equal(model.module.state_dict()[first], state[first].float())


def test_bundled_digest_equals_loading_the_same_file_by_path():
    path = str(bundled_weights(BUNDLED_MOBILENET).path)
    by_name = load_quietly("torchvision:mobilenet_v2", BUNDLED_MOBILENET)
    by_path = load_quietly("torchvision:mobilenet_v2", path, preprocessing=Preprocessing.from_range(-1.0, 1.0))
    assert by_name.weights_digest == by_path.weights_digest
    assert by_name.weights_digest != load_quietly("torchvision:mobilenet_v2", "none").weights_digest


def test_unknown_bundled_name_lists_the_available_ones():
    with pytest.raises(WeightsError, match=r"unknown bundled weights 'bundled:mobilenet_v3'.*bundled:mobilenet_v2_imagenet"):
        load_model("torchvision:mobilenet_v2", "bundled:mobilenet_v3")


def test_bundled_weights_for_another_source_are_refused_before_building():
    with pytest.raises(WeightsError, match=r"for source 'torchvision:mobilenet_v2', not 'torchvision:resnet18'"):
        load_model("torchvision:resnet18", BUNDLED_MOBILENET)


def test_weights_file_for_torchvision_builder_without_preprocessing_warns_naming_what_is_assumed():
    path = str(bundled_weights(BUNDLED_MOBILENET).path)
    with pytest.warns(AssumedPreprocessingWarning, match=r"mean \[0\.485, 0\.456, 0\.406\].*224px"):
        model = load_model("torchvision:mobilenet_v2", path, device="cpu")
    assert len(model.notes) == 1 and "ASSUMED" in model.notes[0] and path in model.notes[0]
    assert model.preprocessing.mean == (0.485, 0.456, 0.406)


def test_weights_file_for_a_python_source_does_not_warn(tmp_path):
    from loupe.pipeline.models.cifar_resnet import resnet20

    path = tmp_path / "r20.pt"
    torch.save(resnet20().state_dict(), path)
    model = load_quietly("loupe.pipeline.models.cifar_resnet:resnet20", str(path))
    assert model.notes == ()


def test_every_bundled_entry_names_an_existing_file_shipped_as_package_data():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["loupe.pipeline.models"]
    for entry in BUNDLED.values():
        assert entry.path.is_file()
        assert any(entry.path.relative_to(PRETRAINED_DIR.parent).match(g) for g in globs)
