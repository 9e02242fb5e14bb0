"""MACO in render_units: every kind batched over units with per-unit seeds, the transparency map,
feature accentuation from start pictures, and the errors that name the setting at fault."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.featurevis import RenderSettings, render_units
from loupe.pipeline.models import LoadedModel
from loupe.pipeline.models.basis import Basis

from .fv_helpers import IDENTITY, natural_magnitude, start_picture

MACO = RenderSettings(size=24, steps=12, param="maco")


@pytest.mark.parametrize("kind", ["channel", "neuron", "negative", "diversity"])
def test_every_kind_renders_with_maco_and_a_unit_ignores_its_batch_mates(tiny, kind):
    settings = RenderSettings(size=24, steps=12, param="maco", images_per_unit=2)
    magnitude = natural_magnitude()
    alone = render_units(tiny, "mid.2", [5], kind, settings, magnitude=magnitude)
    crowd = render_units(tiny, "mid.2", [2, 5, 9], kind, settings, magnitude=magnitude, images_per_step=6)
    per_unit = 2 if kind == "diversity" else 1
    assert crowd.images.shape == (3 * per_unit, 24, 24, 3) and crowd.alpha.shape == (3 * per_unit, 24, 24)
    rows = crowd.units == 5
    assert np.abs(crowd.images[rows].astype(int) - alone.images.astype(int)).max() <= 2
    np.testing.assert_allclose(crowd.activations[rows], alone.activations, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(crowd.alpha[rows].astype(np.float32), alone.alpha.astype(np.float32), atol=2e-3)
    assert np.abs(crowd.images[0].astype(int) - alone.images[0].astype(int)).mean() > 5


def test_maco_raises_each_units_objective(tiny):
    magnitude = natural_magnitude()
    start = render_units(tiny, "mid.2", [3, 0, 7], settings=RenderSettings(size=24, steps=1, param="maco"),
                         magnitude=magnitude)
    done = render_units(tiny, "mid.2", [3, 0, 7], settings=RenderSettings(size=24, steps=40, param="maco"),
                        magnitude=magnitude)
    assert (done.activations > start.activations).all()
    negative = render_units(tiny, "mid.0", [3], "negative", RenderSettings(size=24, steps=40, param="maco"),
                            magnitude=magnitude)
    up = render_units(tiny, "mid.0", [3], "channel", RenderSettings(size=24, steps=40, param="maco"),
                      magnitude=magnitude)
    assert negative.activations[0] < up.activations[0]


def test_maco_renders_directions_of_a_basis(tiny):
    basis = Basis("mid.2", torch.randn(4, 16, generator=torch.Generator().manual_seed(0)))
    magnitude = natural_magnitude()
    start = render_units(tiny, "mid.2", [1, 3], settings=RenderSettings(size=24, steps=1, param="maco"),
                         magnitude=magnitude, basis=basis)
    done = render_units(tiny, "mid.2", [1, 3], settings=RenderSettings(size=24, steps=40, param="maco"),
                        magnitude=magnitude, basis=basis)
    assert (done.activations > start.activations).all()


class LeftHalf(nn.Module):
    """A conv whose output is zeroed over the right half of the image: its units never see that half."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.seen = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = (torch.arange(x.shape[-1], device=x.device) < x.shape[-1] // 2).to(x.dtype)
        return self.seen(self.conv(x) * left)


def left_half_model() -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel.from_module(LeftHalf(), preprocessing=IDENTITY, device="cpu", name="left")


@pytest.mark.parametrize("param", ["maco", "lucid"])
def test_transparency_is_where_the_objective_looks(param):
    settings = RenderSettings(size=24, steps=20, param=param, transparency=True, standard_transforms=False)
    renders = render_units(left_half_model(), "seen", [0, 1, 2], settings=settings,
                           magnitude=natural_magnitude() if param == "maco" else None)
    alpha = renders.alpha.astype(np.float32)
    assert renders.alpha.dtype == np.float16 and alpha.shape == (3, 24, 24)
    assert alpha.min() >= 0 and np.allclose(alpha.reshape(3, -1).max(1), 1.0)
    left_share = alpha[:, :, :12].sum((1, 2)) / alpha.sum((1, 2))
    assert (left_share > 0.9).all(), left_share
    assert alpha[:, :, 13:].max() == 0  # column 12 reaches the left half only through the 3x3 conv


def test_the_transparency_map_follows_the_image_under_the_standard_transforms():
    settings = RenderSettings(size=24, steps=30, param="maco")
    alpha = render_units(left_half_model(), "seen", [0, 1], settings=settings, magnitude=natural_magnitude()).alpha
    alpha = alpha.astype(np.float32)
    assert (alpha[:, :, :12].sum((1, 2)) > 2 * alpha[:, :, 12:].sum((1, 2))).all()


def test_lucid_renders_have_no_alpha_unless_asked(tiny):
    assert render_units(tiny, "mid.2", [0], settings=RenderSettings(size=24, steps=2)).alpha is None


def mean_distance(images: np.ndarray, start: np.ndarray) -> np.ndarray:
    return np.abs(images.astype(float) - start.astype(float)).mean(axis=(1, 2, 3))


def correlation(images: np.ndarray, start: np.ndarray) -> np.ndarray:
    flat = start.reshape(-1).astype(float)
    return np.array([np.corrcoef(image.reshape(-1).astype(float), flat)[0, 1] for image in images])


def test_a_lucid_render_starts_exactly_at_its_start_picture(tiny):
    start = start_picture()
    first = render_units(tiny, "mid.2", [3, 5], settings=RenderSettings(size=24, steps=1, lr=1e-6),
                         start_images=start)
    assert mean_distance(first.images, start).max() < 0.5


@pytest.mark.parametrize("param", ["lucid", "maco"])
def test_accentuation_stays_near_the_start_and_raises_the_objective(tiny, param):
    start = start_picture()
    magnitude = natural_magnitude() if param == "maco" else None
    origin = render_units(tiny, "mid.2", [3, 5], settings=RenderSettings(size=24, steps=1, lr=1e-6, param=param),
                          start_images=start, magnitude=magnitude)  # where the render starts (lucid: the picture)

    def render(weight: float):
        settings = RenderSettings(size=24, steps=40, param=param, accentuation_weight=weight)
        return render_units(tiny, "mid.2", [3, 5], settings=settings, start_images=start, magnitude=magnitude)

    held, free = render(1000.0), render(0.0)
    assert (free.activations > origin.activations).all()
    if param == "lucid":
        assert (mean_distance(held.images, start) < 0.2 * mean_distance(free.images, start)).all()
        assert mean_distance(held.images, start).max() < 3  # within a few grey levels of the picture
        assert (held.activations > origin.activations).all()
    else:  # MACO starts from the picture's phase only, so it holds the picture's structure, not its pixels
        assert (mean_distance(held.images, start) < mean_distance(free.images, start)).all()
        assert (correlation(held.images, start) > correlation(free.images, start) + 0.1).all()
        assert (correlation(held.images, start) > 0.5).all()


def test_one_start_picture_per_unit(tiny):
    pictures = np.concatenate([start_picture(), 255 - start_picture()])
    renders = render_units(tiny, "mid.2", [3, 5], "diversity",
                           RenderSettings(size=24, steps=1, lr=1e-6, images_per_unit=2), start_images=pictures)
    assert renders.units.tolist() == [3, 3, 5, 5]
    assert mean_distance(renders.images, pictures.repeat(2, axis=0)).max() < 0.5


def test_bad_maco_and_accentuation_requests_name_the_setting(tiny):
    with pytest.raises(LoupeError, match="param='maco' needs render_units\\(..., magnitude=\\) of shape \\[3, 24, 13\\]"):
        render_units(tiny, "mid.2", [0], settings=MACO)
    with pytest.raises(LoupeError, match=r"shape \[3, 32, 17\] but render setting size=24 needs \[3, 24, 13\]"):
        render_units(tiny, "mid.2", [0], settings=MACO, magnitude=natural_magnitude(32))
    with pytest.raises(LoupeError, match="only used by render setting param='maco'"):
        render_units(tiny, "mid.2", [0], settings=RenderSettings(size=24, steps=1), magnitude=natural_magnitude())
    with pytest.raises(LoupeError, match="render setting param must be one of lucid, maco, got 'fourier'"):
        RenderSettings(param="fourier")
    with pytest.raises(LoupeError, match="accentuation_weight must be >= 0"):
        RenderSettings(accentuation_weight=-1)
    with pytest.raises(LoupeError, match="accentuation_weight=2.0 needs render_units\\(..., start_images=\\)"):
        render_units(tiny, "mid.2", [0], settings=RenderSettings(size=24, steps=1, accentuation_weight=2.0))
    with pytest.raises(LoupeError, match=r"start_images must be uint8 \[2 or 1, 24, 24, 3\]"):
        render_units(tiny, "mid.2", [0, 1], settings=RenderSettings(size=24, steps=1),
                     start_images=np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(LoupeError, match="start_images must be uint8"):
        render_units(tiny, "mid.2", [0, 1], settings=RenderSettings(size=24, steps=1),
                     start_images=np.zeros((3, 24, 24, 3), np.uint8))
