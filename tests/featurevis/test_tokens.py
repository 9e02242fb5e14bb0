"""Token layers (NLC) of a real vision transformer: every render kind, directions and scores, with
Lucid's and MACO's parameterizations, on torchvision's VisionTransformer (which accepts one size only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models import VisionTransformer

from loupe.pipeline.featurevis import RenderSettings, objectives, render_units, render_vis, score_renders
from loupe.pipeline.featurevis.engine import fit_input, fixed_input_size
from loupe.pipeline.featurevis.objectives import Activations, centre_token
from loupe.pipeline.models import LoadedModel, Preprocessing, capture
from loupe.pipeline.models.basis import Basis

from .fv_helpers import natural_magnitude

BLOCK = "encoder.layers.encoder_layer_1"
MLP = "encoder.layers.encoder_layer_1.mlp.1"


@pytest.fixture(scope="module")
def vit() -> LoadedModel:
    """A two-block ViT on 32 px images, 8 px patches: 16 patch tokens after one class token."""
    torch.manual_seed(0)
    net = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    preprocessing = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_size=32)
    return LoadedModel.from_module(net, preprocessing=preprocessing, device="cpu", name="vit")


def settings(param: str, steps: int, **kw) -> RenderSettings:
    # The standard transforms pad 12 px: on a 32 px image with 8 px patches that is more than a patch,
    # so the rise is checked without them (the transformed path is checked on its own below).
    return RenderSettings(size=32, steps=steps, param=param, standard_transforms=False, images_per_unit=2, **kw)


def test_the_catalog_lays_token_layers_out_channels_last(vit):
    info = vit.catalog[BLOCK]
    assert (info.layout, info.channels, info.spatial) == ("NLC", 32, (17,))
    assert vit.catalog[MLP].channels == 64


def test_the_centre_neuron_is_the_centre_patch_not_the_class_token():
    assert centre_token(17) == 1 + 2 * 4 + 2  # class token, then a 4 x 4 grid row by row: row 2, column 2
    assert centre_token(197) == 1 + 7 * 14 + 7  # vit_b_16 at 224 px
    assert centre_token(16) == 2 * 4 + 2  # no class token
    assert centre_token(7) == 3  # not a grid: the middle token
    t = torch.randn(2, 17, 5)
    T = Activations({"tokens": t}, layouts={"tokens": "NLC"})
    assert torch.equal(objectives.neuron_values(T, "tokens", [4, 1]), t[[0, 1], 11, [4, 1]])


def test_a_vision_transformer_takes_one_input_size_and_renders_are_fitted_to_it(vit, tiny):
    assert fixed_input_size(vit.module) == (32, 32)
    assert fixed_input_size(tiny.module) is None
    x = torch.rand(2, 3, 44, 44, requires_grad=True)
    fitted = fit_input(x, (32, 32))
    fitted.sum().backward()
    assert fitted.shape == (2, 3, 32, 32) and x.grad.abs().sum() > 0
    assert fit_input(x, None) is x


@pytest.mark.parametrize("param", ["lucid", "maco"])
@pytest.mark.parametrize("kind", ["channel", "neuron", "diversity"])
@pytest.mark.parametrize("layer", [BLOCK, MLP])
def test_every_kind_raises_its_token_objective(vit, param, kind, layer):
    magnitude = natural_magnitude(32) if param == "maco" else None
    units = [0, 2, 5]
    start = render_units(vit, layer, units, kind, settings(param, 1), magnitude=magnitude)
    done = render_units(vit, layer, units, kind, settings(param, 40), magnitude=magnitude)
    assert done.images.shape == start.images.shape and done.images.shape[1:] == (32, 32, 3)
    if kind == "diversity":  # the diversity term may trade activation for difference: the sets differ
        assert done.units.tolist() == [0, 0, 2, 2, 5, 5]
        assert all(np.abs(done.images[i].astype(int) - done.images[i + 1]).mean() > 5 for i in (0, 2, 4))
    else:
        assert (done.activations > start.activations).all(), (start.activations, done.activations)


@pytest.mark.parametrize("param", ["lucid", "maco"])
def test_directions_of_a_token_layer(vit, param):
    basis = Basis(BLOCK, torch.randn(6, 32, generator=torch.Generator().manual_seed(1)))
    magnitude = natural_magnitude(32) if param == "maco" else None
    for kind in ("channel", "neuron"):
        start = render_units(vit, BLOCK, [1, 4], kind, settings(param, 1), basis=basis, magnitude=magnitude)
        done = render_units(vit, BLOCK, [1, 4], kind, settings(param, 40), basis=basis, magnitude=magnitude)
        assert (done.activations > start.activations).all()


def test_renders_under_the_standard_transforms_and_at_another_size(vit):
    standard = render_units(vit, BLOCK, [0, 1], settings=RenderSettings(size=32, steps=3))
    smaller = render_units(vit, BLOCK, [0, 1], settings=RenderSettings(size=24, steps=3, param="maco"),
                           magnitude=natural_magnitude(24))
    assert standard.images.shape == (2, 32, 32, 3) and smaller.images.shape == (2, 24, 24, 3)
    (image,) = render_vis(vit, f"{BLOCK}:3", thresholds=(3,), seed=0, progress=False)
    assert image.shape == (1, 128, 128, 3)


def test_scores_of_token_layers(vit):
    renders = render_units(vit, BLOCK, [0, 3, 7], settings=settings("lucid", 20)).images
    scores = score_renders(vit, BLOCK, [0, 3, 7], renders, transforms=3)
    with capture(vit, [BLOCK]) as cap, torch.inference_mode():
        tokens = cap.run(torch.from_numpy(renders).permute(0, 3, 1, 2).float() / 255)[BLOCK]  # [3, 17, 32]
    expected = tokens.amax(1)[torch.arange(3), torch.tensor([0, 3, 7])].numpy()
    np.testing.assert_array_equal(scores.activation, expected)
    assert np.isfinite(scores.robustness[scores.activation > 0]).all() and (scores.activation > 0).any()
