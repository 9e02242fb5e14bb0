"""Layer catalog shapes match the published architectures (weights none, one dry run)."""

import pytest

from loupe.pipeline.errors import LayerError, UnitError
from loupe.pipeline.models import load_model

EXPECTED = {
    "torchvision:googlenet": {
        "conv1": (64, (112, 112)),
        "inception3a": (256, (28, 28)),
        "inception4a": (512, (14, 14)),
        "inception4a_pre_relu": (512, (14, 14)),
        "inception4a.branch2.1.conv": (208, (14, 14)),
        "inception5b": (1024, (7, 7)),
        "logits": (1000, ()),
    },
    "torchvision:alexnet": {
        "features.0": (64, (55, 55)),
        "features.3": (192, (27, 27)),
        "features.10": (256, (13, 13)),
        "classifier.1": (4096, ()),
        "logits": (1000, ()),
    },
    "torchvision:resnet18": {
        "conv1": (64, (112, 112)),
        "layer1.0.relu": (64, (56, 56)),
        "layer3.1.relu": (256, (14, 14)),
        "layer3.1.relu@1": (256, (14, 14)),
        "layer4": (512, (7, 7)),
        "fc": (1000, ()),
    },
    "torchvision:mobilenet_v2": {
        "features.0": (32, (112, 112)),
        "features.10": (64, (14, 14)),
        "features.14": (160, (7, 7)),
        "features.18": (1280, (7, 7)),
        "classifier.1": (1000, ()),
    },
    "torchvision:vit_b_16": {
        "conv_proj": (768, (14, 14)),
        "encoder.layers.encoder_layer_0": (768, (197,)),
        "encoder.layers.encoder_layer_11.mlp": (768, (197,)),
        "heads.head": (1000, ()),
    },
}


@pytest.mark.parametrize("source", sorted(EXPECTED))
def test_catalog_matches_architecture(source):
    catalog = load_model(source, "none").catalog
    for name, (channels, spatial) in EXPECTED[source].items():
        info = catalog[name]
        assert (info.channels, info.spatial) == (channels, spatial), name


def test_vit_tokens_are_addressed_as_channels_last():
    info = load_model("torchvision:vit_b_16", "none").catalog["encoder.layers.encoder_layer_5"]
    assert info.layout == "NLC"


def test_catalog_is_in_execution_order_and_names_are_unique():
    catalog = load_model("torchvision:resnet18", "none").catalog
    names = catalog.names()
    assert len(names) == len(set(names))
    assert names.index("conv1") < names.index("layer1.0.conv1") < names.index("layer4") < names.index("logits")
    assert names[-1] == "logits"


def test_module_called_twice_gets_two_addresses():
    catalog = load_model("torchvision:resnet18", "none").catalog
    first, second = catalog["layer3.1.relu"], catalog["layer3.1.relu@1"]
    assert first.order < catalog["layer3.1.bn2"].order < second.order
    assert "layer3.1.relu@2" not in catalog


def test_unit_addresses_are_validated():
    model = load_model("torchvision:mobilenet_v2", "none")
    ref = model.unit("features.14:37")
    assert (ref.layer, ref.unit, str(ref)) == ("features.14", 37, "features.14:37")
    with pytest.raises(UnitError, match="160 channels"):
        model.unit("features.14:160")
    with pytest.raises(UnitError, match="not an integer"):
        model.unit("features.14:x")
    with pytest.raises(UnitError, match="layer:unit"):
        model.unit("features.14")


def test_unknown_layer_suggests_close_matches():
    model = load_model("torchvision:mobilenet_v2", "none")
    with pytest.raises(LayerError, match=r"unknown layer 'feature.14'.*features.14"):
        model.layer("feature.14")
    with pytest.raises(LayerError, match=r"features\.14"):
        model.unit("feature.14:3")
