"""Config validation: every error names its field path and bad value, before any compute."""

import pytest

from loupe.jobs.build.config import ConfigError, load_config, parse_config, parse_units
from loupe.jobs.build.resolve import resolve_build

from tests.builds.build_helpers import TINY_MODEL, save_config, tiny_config


def errors_of(raw):
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return str(info.value)


def test_schema_errors_are_all_reported_with_paths():
    raw = tiny_config("atlas", None)
    raw["models"][0]["layerz"] = raw["models"][0].pop("layers")
    raw["render"]["channel"]["steps"] = 0
    raw["resources"]["gpus_per_actor"] = -1
    raw["surprise"] = True
    message = errors_of(raw)
    assert "models[0].layerz: unknown key" in message
    assert "render.channel.steps" in message and "(got 0)" in message
    assert "resources.gpus_per_actor" in message
    assert "surprise: unknown key" in message
    assert "models[0].layers: Field required" in message


def test_weights_must_be_said_explicitly():
    raw = tiny_config("atlas", None)
    raw["models"][0]["weights"] = None
    assert "models[0].weights" in errors_of(raw)


def test_duplicate_model_ids_are_rejected():
    raw = tiny_config("atlas", None)
    raw["models"].append(dict(raw["models"][0]))
    assert "model id 'r20' is used twice" in errors_of(raw)


@pytest.mark.parametrize(
    "spec, expected",
    [("all", [0, 1, 2, 3, 4]), ("1-3", [1, 2, 3]), ([0, "2-3", 4], [0, 2, 3, 4]), (2, [2]), ("0-1, 4", [0, 1, 4])],
)
def test_unit_specs(spec, expected):
    assert parse_units(spec, 5, "u") == expected


@pytest.mark.parametrize("spec, message", [("3-1", "ends before"), ([7], "out of range: the layer has 5"), ("x", "is not 'all'")])
def test_bad_unit_specs_name_the_field(spec, message):
    with pytest.raises(ConfigError, match=rf"models\[0\].layers\[1\].units.*{message}"):
        parse_units(spec, 5, "models[0].layers[1].units")


def test_semantic_errors_name_layer_unit_source_and_weights():
    raw = tiny_config("atlas", None)
    raw["models"][0]["layers"] = ["layer1.0.bn1", "layer9", {"name": "layer2", "units": [40]}]
    raw["models"].append({"id": "bad", "source": "torchvision:resnet", "weights": "none", "layers": ["fc"]})
    raw["models"].append({"id": "w", "source": TINY_MODEL, "weights": "IMAGENET1K_V9", "layers": ["layer1"]})
    with pytest.raises(ConfigError) as info:
        resolve_build(parse_config(raw), with_weights=False)
    message = str(info.value)
    assert "models[0].layers[1]: unknown layer 'layer9'" in message
    assert "models[0].layers[2].units: units [40] are out of range: the layer has 32 channels" in message
    assert "models[1] (bad): unknown torchvision builder 'resnet'" in message
    assert "models[2] (w): weights 'IMAGENET1K_V9'" in message


def test_layer_render_overrides_are_validated_with_their_path():
    raw = tiny_config("atlas", None)
    raw["models"][0]["layers"] = [{"name": "layer2", "render": {"channel": {"steps": -5}}}]
    with pytest.raises(ConfigError, match=r"models\[0\].layers\[0\].render.channel.*steps"):
        resolve_build(parse_config(raw), with_weights=False)


def test_layer_entries_inherit_the_model_units():
    raw = tiny_config("atlas", None)
    raw["models"][0]["layers"] = ["layer1.0.bn1", {"name": "layer2", "render": {"channel": {"steps": 4}}}]
    model = resolve_build(parse_config(raw), with_weights=False)[0]
    assert [layer.units for layer in model.layers] == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert model.layers[1].render["channel"].steps == 4 and model.layers[0].render["channel"].steps == 3


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    path = save_config(tmp_path / "c.yaml", tiny_config("out/atlas", "images"))
    config = load_config(path)
    assert config.atlas.url == str(tmp_path / "out" / "atlas")
    assert config.scan.dataset.url == str(tmp_path / "images")


def test_unreadable_config_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("atlas: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(bad)
