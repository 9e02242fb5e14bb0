"""Model sources: torchvision builders and a user's own `package.module:callable`."""

import sys
import textwrap

import pytest
import torch

from loupe.pipeline.errors import ModelSourceError
from loupe.pipeline.models import Preprocessing, load_model, torchvision_builders


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    package = tmp_path / "mylab"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class TinyNet(nn.Module):
            loupe_preprocessing = {"mean": [0.5], "std": [0.5], "input_size": 32}

            def __init__(self, width=8):
                super().__init__()
                self.stem = nn.Conv2d(3, width, 3, padding=1)
                self.act = nn.ReLU(inplace=True)
                self.head = nn.Linear(width, 10)

            def forward(self, x):
                x = self.act(self.stem(x))
                return self.head(x.mean(dim=(2, 3)))

        def build(width=8):
            return TinyNet(width)

        def not_a_model():
            return 42
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mylab.nets"
    for name in [m for m in sys.modules if m.startswith("mylab")]:
        del sys.modules[name]


def test_user_callable_with_kwargs_and_declared_preprocessing(user_package):
    model = load_model(f"{user_package}:build", "none", model_kwargs={"width": 4})
    assert model.catalog["stem"].channels == 4
    assert model.catalog["stem"].spatial == (32, 32)
    assert model.preprocessing == Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=32)
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_user_class_is_a_callable_too(user_package):
    assert load_model(f"{user_package}:TinyNet", "none").catalog["logits"].channels == 10


def test_unknown_callable_suggests_close_matches(user_package):
    with pytest.raises(ModelSourceError, match=r"no attribute 'biuld'.*build"):
        load_model(f"{user_package}:biuld", "none")


def test_unknown_module_is_named(user_package):
    with pytest.raises(ModelSourceError, match="cannot import module 'mylab.nope'"):
        load_model("mylab.nope:build", "none")


def test_callable_must_return_a_module(user_package):
    with pytest.raises(ModelSourceError, match="returned a int"):
        load_model(f"{user_package}:not_a_model", "none")


def test_unknown_torchvision_builder_suggests_close_matches():
    with pytest.raises(ModelSourceError, match=r"'resnet5'.*resnet50"):
        load_model("torchvision:resnet5", "none")


@pytest.mark.parametrize("text", ["resnet50", "torchvision:", ":build", "mylab.nets:"])
def test_malformed_sources_are_rejected(text):
    with pytest.raises(ModelSourceError):
        load_model(text, "none")


def test_builder_list_covers_the_classic_vision_models():
    builders = torchvision_builders()
    for name in ["googlenet", "alexnet", "vgg16", "resnet50", "mobilenet_v2", "inception_v3", "convnext_tiny", "vit_b_16"]:
        assert builders[name] == "classification"
    assert builders["fasterrcnn_resnet50_fpn"] == "detection"


def test_torchvision_preprocessing_comes_from_the_weight_enum():
    model = load_model("torchvision:inception_v3", "none")
    assert model.preprocessing.input_size == 299
    assert model.catalog["Mixed_5b"].spatial == (35, 35)
