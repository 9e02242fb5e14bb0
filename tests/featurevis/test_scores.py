"""Render scores: fv_activation is the scan's statistic on the render (checked against a real scan),
fv_robustness is 1 where the unit provably ignores the transforms and below 1 where it depends on
an exact pixel, and both are deterministic and batch-independent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from loupe.pipeline.data import LoaderOptions, list_images
from loupe.pipeline.errors import LoupeError
from loupe.pipeline.featurevis import score_renders
from loupe.pipeline.models import LoadedModel, Preprocessing, capture
from loupe.pipeline.scan import ScanOptions, scan_dataset

from tests.scan.helpers import png_bytes, tiny_model, write_folder

IDENTITY = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=16, resize_size=16)


class Colours(nn.Module):
    """The image itself: channel c's spatial max is the brightest value of colour c."""

    def forward(self, x):
        return x * 1.0


class CentrePixel(nn.Module):
    """Responds only to the red value at the centre pixel: any shift of the picture changes it."""

    def forward(self, x):
        h, w = x.shape[2] // 2, x.shape[3] // 2
        out = torch.zeros(x.shape[0], 1, x.shape[2], x.shape[3])
        out[:, 0, h, w] = x[:, 0, h, w]
        return out


class Tokens(nn.Module):
    """2x2 patches -> tokens -> linear: a channels-last (NLC) layer like a vision transformer's."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 4, 2, stride=2)
        self.proj = nn.Linear(4, 3)

    def forward(self, x):
        return self.proj(self.patch(x).flatten(2).transpose(1, 2))


def wrap(module: nn.Module) -> LoadedModel:
    return LoadedModel.from_module(nn.Sequential(module), preprocessing=IDENTITY, device="cpu", name="m")


def test_activation_is_the_scans_statistic(tmp_path):
    model = tiny_model(input_size=10)
    rng = np.random.default_rng(0)
    renders = rng.integers(0, 256, (4, 10, 10, 3), dtype=np.uint8)
    scores = score_renders(model, "conv1", [0, 3, 5, 1], renders, transforms=2)
    with capture(model, ["conv1"]) as cap, torch.inference_mode():
        maps = cap.run(torch.from_numpy(renders).permute(0, 3, 1, 2).float() / 255)["conv1"]
    expected = maps.flatten(2).amax(2)[torch.arange(4), torch.tensor([0, 3, 5, 1])].numpy()
    assert np.array_equal(scores.activation, expected)
    folder = write_folder(tmp_path / "renders", {f"r{i}.png": png_bytes(r) for i, r in enumerate(renders)})
    result = scan_dataset(model, list_images(str(folder)), ["conv1"], options=ScanOptions(k=4, pooled=False),
                          loader=LoaderOptions(images_per_batch=4, workers=0))
    top = result.layers["conv1"].top
    for i, unit in enumerate([0, 3, 5, 1]):
        slot = list(top.image_index[unit]).index(i)
        assert top.values(bottom=False)[unit, slot] == pytest.approx(scores.activation[i], rel=1e-6)


def test_robustness_is_one_for_an_invariant_unit_and_lower_for_a_pixel_detector():
    # A constant image brighter than the transforms' grey fill (0.5): every transformed pixel is a
    # convex mix of the colour and the fill, and the centre stays inside the image under any draw,
    # so the max of each colour is unchanged.
    constant = np.empty((3, 16, 16, 3), dtype=np.uint8)
    constant[:] = [200, 150, 255]
    invariant = score_renders(wrap(Colours()), "0", [0, 1, 2], constant, transforms=6, seed=3)
    assert np.allclose(invariant.activation, np.array([200, 150, 255]) / 255, rtol=1e-6)
    assert np.allclose(invariant.robustness, 1.0, rtol=1e-5)
    rng = np.random.default_rng(1)
    pixel = rng.integers(0, 60, (2, 16, 16, 3), dtype=np.uint8)
    pixel[:, 8, 8, 0] = 255
    fragile = score_renders(wrap(CentrePixel()), "0", [0, 0], pixel, transforms=8, seed=0)
    assert fragile.activation.tolist() == [1.0, 1.0]
    # Each transformed value mixes the bright pixel with darker ones or the grey fill: never above 1,
    # and the jitter moves the bright pixel off the centre in most draws.
    assert (fragile.robustness < 0.8).all()


def test_nothing_to_divide_by_gives_nan():
    dark = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    scores = score_renders(wrap(Colours()), "0", [0, 1], dark, transforms=3)
    assert scores.activation.tolist() == [0.0, 0.0] and np.isnan(scores.robustness).all()
    bright = np.full((1, 16, 16, 3), 200, dtype=np.uint8)
    assert np.isnan(score_renders(wrap(Colours()), "0", [0], bright, transforms=0).robustness).all()


def test_token_layers_use_the_unit_as_the_last_axis():
    torch.manual_seed(0)
    model = LoadedModel.from_module(Tokens(), preprocessing=IDENTITY, device="cpu", name="tokens")
    assert model.catalog["proj"].layout == "NLC"
    renders = np.random.default_rng(4).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    scores = score_renders(model, "proj", [2, 0, 1], renders, transforms=2)
    with capture(model, ["proj"]) as cap, torch.inference_mode():
        tokens = cap.run(torch.from_numpy(renders).permute(0, 3, 1, 2).float() / 255)["proj"]  # [3, 64, 3]
    assert np.array_equal(scores.activation, tokens.amax(1)[torch.arange(3), torch.tensor([2, 0, 1])].numpy())


def test_deterministic_and_batch_independent():
    model = tiny_model(input_size=10)
    renders = np.random.default_rng(2).integers(0, 256, (5, 10, 10, 3), dtype=np.uint8)
    units = [0, 1, 2, 3, 4]
    together = score_renders(model, "conv1", units, renders, transforms=4, seed=9)
    apart = score_renders(model, "conv1", units, renders, transforms=4, seed=9, images_per_step=2)
    again = score_renders(model, "conv1", units, renders, transforms=4, seed=9)
    other = score_renders(model, "conv1", units, renders, transforms=4, seed=10)
    assert np.isfinite(together.robustness).any()
    # Other batch shapes may sum convolutions in another order: last-bit differences only.
    assert np.allclose(together.activation, apart.activation, rtol=1e-6)
    assert np.allclose(together.robustness, apart.robustness, rtol=1e-5, equal_nan=True)
    for i, unit in enumerate(units):  # one at a time, without batch mates: the same draws
        alone = score_renders(model, "conv1", [unit], renders[i:i + 1], transforms=4, seed=9)
        assert np.allclose(alone.activation, together.activation[i:i + 1], rtol=1e-6)
        assert np.allclose(alone.robustness, together.robustness[i:i + 1], rtol=1e-5, equal_nan=True)
    assert np.array_equal(together.activation, again.activation)
    assert np.array_equal(together.robustness, again.robustness, equal_nan=True)
    assert np.array_equal(together.activation, other.activation)  # no transforms in the activation
    assert not np.array_equal(together.robustness, other.robustness, equal_nan=True)


def test_bad_units_and_shapes_are_named():
    model = tiny_model(input_size=10)
    renders = np.zeros((2, 10, 10, 3), dtype=np.uint8)
    with pytest.raises(LoupeError, match="unit 6 .*layer conv1"):
        score_renders(model, "conv1", [0, 6], renders)
    with pytest.raises(LoupeError, match="unit -1 .*layer conv1"):
        score_renders(model, "conv1", [-1, 0], renders)
    with pytest.raises(LoupeError, match="unknown layer 'conv9'"):
        score_renders(model, "conv9", [0, 1], renders)
    with pytest.raises(LoupeError, match="layer conv1.*uint8"):
        score_renders(model, "conv1", [0, 1], renders.astype(np.float32))
    with pytest.raises(LoupeError, match="one per unit"):
        score_renders(model, "conv1", [0], renders)
    with pytest.raises(LoupeError, match=r"\[2, 10, 10\]"):
        score_renders(model, "conv1", [0, 1], renders[..., 0])
    with pytest.raises(LoupeError, match="images_per_step"):
        score_renders(model, "conv1", [0, 1], renders, images_per_step=0)
