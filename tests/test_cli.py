"""The `loupe` CLI as a user runs it: a real subprocess, real exit codes, errors on stderr."""

import json
import subprocess
import sys

import pytest


def loupe(*args):
    return subprocess.run([sys.executable, "-m", "loupe.jobs.cli", *args], capture_output=True, text=True, timeout=300)


def test_models_lists_torchvision_builders_with_weights():
    result = loupe("models", "--task", "classification")
    assert result.returncode == 0, result.stderr
    assert "torchvision:googlenet" in result.stdout and "IMAGENET1K_V1" in result.stdout
    assert "fasterrcnn" not in result.stdout


def test_layers_prints_the_catalog():
    result = loupe("layers", "torchvision:mobilenet_v2", "--match", "features.1?")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.startswith("features.")}
    assert rows["features.14"][2:4] == ["160", "7x7"]
    assert "features.2" not in rows


def test_layers_json_is_machine_readable():
    result = loupe("layers", "torchvision:googlenet", "--match", "inception4a*", "--json")
    layers = {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert layers["inception4a"]["channels"] == 512 and layers["inception4a"]["spatial"] == [14, 14]
    assert layers["inception4a_pre_relu"]["parts"][0] == "inception4a.branch1.bn"


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["layers", "torchvision:googlenett"], "did you mean: googlenet"),
        (["layers", "torchvision:resnet18", "--weights", "/no/such/file.pth"], "/no/such/file.pth"),
    ],
)
def test_errors_name_the_culprit_and_exit_2(args, culprit):
    result = loupe(*args)
    assert result.returncode == 2
    assert culprit in result.stderr
    assert "Traceback" not in result.stderr
