"""Weights from files and URLs: identical through every route, and refused with clear reasons."""

import os

import boto3
import pytest
import torch
from torch import nn

from loupe.pipeline.errors import WeightsError
from loupe.pipeline.models import load_model

SOURCE = "torchvision:resnet18"


@pytest.fixture(scope="module")
def trained_state():
    """A resnet18 state dict that differs from the seeded random init (so loading is observable)."""
    return load_model(SOURCE, "none", seed=123).module.state_dict()


@pytest.fixture
def weights_file(tmp_path, trained_state):
    path = tmp_path / "resnet18.pth"
    torch.save(trained_state, path)
    return path


def outputs(model):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(images)


def test_local_path_and_file_url_load_the_same_weights(weights_file):
    by_path = load_model(SOURCE, str(weights_file))
    by_url = load_model(SOURCE, weights_file.as_uri())
    random = load_model(SOURCE, "none")
    assert by_path.weights_digest == by_url.weights_digest != random.weights_digest
    assert torch.equal(outputs(by_path), outputs(by_url))
    assert by_path.categories[0] == "tench" and len(by_path.categories) == 1000  # from the builder's weight enum


def test_s3_weights_load_identically_to_local(weights_file, s3_endpoint, s3_bucket, s3_options):
    boto3.client("s3", endpoint_url=s3_endpoint).upload_file(str(weights_file), s3_bucket, "models/r18.pth")
    local = load_model(SOURCE, str(weights_file))
    remote = load_model(SOURCE, f"s3://{s3_bucket}/models/r18.pth", storage_options=s3_options)
    assert remote.weights_digest == local.weights_digest
    assert torch.equal(outputs(remote), outputs(local))


def test_missing_s3_object_names_the_url(s3_bucket, s3_options):
    url = f"s3://{s3_bucket}/models/absent.pth"
    with pytest.raises(WeightsError, match=url):
        load_model(SOURCE, url, storage_options=s3_options)


def test_random_init_is_deterministic_per_seed():
    assert load_model(SOURCE, "none").weights_digest == load_model(SOURCE, "none").weights_digest
    assert load_model(SOURCE, "none", seed=1).weights_digest != load_model(SOURCE, "none").weights_digest


def test_weights_must_be_named_explicitly():
    with pytest.raises(WeightsError, match="say 'none'"):
        load_model(SOURCE, "")


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match=f"not found: {path}"):
        load_model(SOURCE, str(path))


def test_unreadable_weights_name_the_path(tmp_path):
    folder = tmp_path / "a-folder.pth"
    folder.mkdir()
    with pytest.raises(WeightsError, match=str(folder)):
        load_model(SOURCE, str(folder))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match=f"{garbage}.*torch checkpoint"):
        load_model(SOURCE, str(garbage))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "whole-model.pth"
    torch.save({"model": nn.Linear(2, 2)}, path)
    with pytest.raises(WeightsError, match="not a plain tensor state dict.*refused"):
        load_model(SOURCE, str(path))


def test_nested_checkpoint_is_explained_and_loadable(tmp_path, trained_state):
    path = tmp_path / "ckpt.th"
    torch.save({"best_prec1": 91.78, "state_dict": {f"module.{k}": v for k, v in trained_state.items()}}, path)
    with pytest.raises(WeightsError, match=r"\['best_prec1'.*state_dict_key.*'state_dict'"):
        load_model(SOURCE, str(path))
    with pytest.raises(WeightsError, match="strip_prefix"):
        load_model(SOURCE, str(path), state_dict_key="state_dict")
    model = load_model(SOURCE, str(path), state_dict_key="state_dict", strip_prefix="module.")
    assert torch.equal(model.module.fc.weight, trained_state["fc.weight"])


def test_key_and_shape_mismatches_name_the_first_keys(tmp_path, trained_state):
    state = dict(trained_state)
    del state["layer4.1.bn2.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["fc.weight"] = torch.zeros(10, 512)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        load_model(SOURCE, str(path))
    message = str(info.value)
    assert "layer4.1.bn2.weight" in message and "extra.weight" in message
    assert "fc.weight: file (10, 512) vs model (1000, 512)" in message
    assert str(path) in message


def test_unknown_weight_name_lists_the_builders_weights():
    with pytest.raises(WeightsError, match=r"IMAGENET1K_V1"):
        load_model(SOURCE, "IMAGENET1K_V9")


def test_torchvision_weight_enum_loads_from_hub_cache(tmp_path, monkeypatch, trained_state):
    """The real enum path (builder(weights=...)), served from a pre-filled torch hub cache, offline."""
    from torchvision.models import ResNet18_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(trained_state, checkpoints / os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url))
    model = load_model(SOURCE, "DEFAULT")
    assert torch.equal(model.module.fc.weight, trained_state["fc.weight"])
    assert model.categories is not None and len(model.categories) == 1000 and model.categories[0] == "tench"
    assert model.weights == "ResNet18_Weights.IMAGENET1K_V1"
    assert model.preprocessing.input_size == 224 and model.preprocessing.resize_size == 256


def test_unreachable_torchvision_weights_name_the_url(tmp_path, monkeypatch):
    """Offline with an empty cache: the download fails (the proxy is a closed loopback port)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(WeightsError, match=r"https://download\.pytorch\.org/models/resnet18-"):
        load_model(SOURCE, "IMAGENET1K_V1")
