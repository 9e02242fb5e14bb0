"""`loupe render`: a PNG from the command line, a progress bar, clear errors before any work."""

import argparse
import textwrap

import numpy as np
import pytest
from PIL import Image

from loupe.jobs.cli.render import add_render_command, default_weights
from loupe.pipeline.errors import LoupeError, UnitError

TOY_MODULE = textwrap.dedent(
    """
    from torch import nn

    def build():
        return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2), nn.ReLU())
    """
)


@pytest.fixture
def toy_source(tmp_path, monkeypatch) -> str:
    (tmp_path / "render_toy_model.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "render_toy_model:build"


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="loupe")
    add_render_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["render", *argv])
    return args.func(args)


def test_render_writes_a_png_with_a_progress_bar(toy_source, tmp_path, capsys):
    out = tmp_path / "unit.png"
    code = run(toy_source, "2:5", "--weights", "none", "--steps", "6", "--size", "40", "--out", str(out),
               "--device", "cpu")
    assert code == 0
    with Image.open(out) as image:
        assert image.size == (40, 40) and image.mode == "RGB"
        pixels = np.asarray(image)
    captured = capsys.readouterr()
    assert "6/6" in captured.err  # tqdm's bar reached the last step
    assert f"wrote {out}" in captured.out and "final activation" in captured.out
    assert pixels.std() > 0


def test_same_seed_same_png(toy_source, tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(2)]
    for path in paths:
        run(toy_source, "0:1", "--weights", "none", "--steps", "3", "--size", "24", "--out", str(path),
            "--seed", "5", "--no-progress", "--device", "cpu")
    images = [np.asarray(Image.open(p)) for p in paths]
    np.testing.assert_array_equal(*images)


def test_diversity_kind_writes_a_strip(toy_source, tmp_path):
    out = tmp_path / "strip.png"
    run(toy_source, "2:0", "--weights", "none", "--steps", "2", "--size", "16", "--kind", "diversity",
        "--images-per-unit", "3", "--out", str(out), "--no-progress", "--device", "cpu")
    with Image.open(out) as image:
        assert image.size == (48, 16)


def test_errors_name_the_culprit_before_rendering(toy_source, tmp_path):
    with pytest.raises(UnitError, match="out of range for layer 2"):
        run(toy_source, "2:99", "--weights", "none", "--out", str(tmp_path / "x.png"), "--device", "cpu")
    with pytest.raises(UnitError, match="layer:unit"):
        run(toy_source, "2", "--weights", "none", "--device", "cpu")
    with pytest.raises(LoupeError, match=".png"):
        run(toy_source, "2:1", "--weights", "none", "--out", str(tmp_path / "x.jpg"))
    with pytest.raises(LoupeError, match="does not exist"):
        run(toy_source, "2:1", "--weights", "none", "--out", str(tmp_path / "nowhere" / "x.png"))
    assert not list(tmp_path.glob("*.png"))


def test_default_weights_are_pretrained_only_where_torchvision_has_them():
    assert default_weights("torchvision:googlenet") == "DEFAULT"
    assert default_weights("mypkg.models:build") == "none"


def test_render_with_maco_writes_rgba_with_the_transparency_as_alpha(toy_source, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(4):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(images / f"i{index}.png")
    out = tmp_path / "maco.png"
    assert run(toy_source, "2:1", "--weights", "none", "--steps", "4", "--size", "32", "--param", "maco",
               "--spectrum-from", str(images), "--out", str(out), "--device", "cpu", "--no-progress") == 0
    with Image.open(out) as image:
        assert image.mode == "RGBA" and image.size == (32, 32)
        alpha = np.asarray(image)[..., 3]
    assert alpha.max() == 255 and alpha.std() > 0
    with pytest.raises(LoupeError, match="--spectrum-from"):
        run(toy_source, "2:1", "--weights", "none", "--param", "maco", "--out", str(out), "--device", "cpu")


def test_render_accentuates_a_start_picture(toy_source, tmp_path):
    start = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(start).save(tmp_path / "start.png")
    out = tmp_path / "accent.png"
    assert run(toy_source, "2:1", "--weights", "none", "--steps", "4", "--size", "32", "--start-image",
               str(tmp_path / "start.png"), "--accentuation-weight", "1000", "--out", str(out), "--device", "cpu",
               "--no-progress") == 0
    with Image.open(out) as image:
        pixels = np.asarray(image).astype(np.int16)
    assert np.abs(pixels - start).mean() < 6, "a strong weight keeps the render near its start picture"
    with pytest.raises(LoupeError, match="--start-image"):
        run(toy_source, "2:1", "--weights", "none", "--start-image", str(tmp_path / "nope.png"), "--out", str(out),
            "--device", "cpu")
