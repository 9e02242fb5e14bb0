"""Batched unit rendering: shapes, kinds, final activations, seeds, and batch-independence."""

import numpy as np
import pytest
import torch
from .fv_helpers import hook_count

from loupe.pipeline.errors import LayerError, LoupeError, UnitError
from loupe.pipeline.featurevis import RenderSettings, render_units, unit_seed

QUICK = RenderSettings(size=24, steps=8)


def channel_means(lm, layer_fn, images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return layer_fn(lm.module, x).mean(dim=(2, 3))


def mid(module, x):
    return module.mid(module.block(module.stem(x)))


def test_uint8_images_and_each_units_final_activation(tiny):
    renders = render_units(tiny, "mid.2", [3, 0, 7], settings=RenderSettings(size=24, steps=30), images_per_step=2)
    assert renders.images.shape == (3, 24, 24, 3) and renders.images.dtype == np.uint8
    assert renders.units.tolist() == [3, 0, 7] and renders.index.tolist() == [0, 0, 0]
    means = channel_means(tiny, mid, renders.images)
    expected = means[torch.arange(3), torch.tensor([3, 0, 7])]
    np.testing.assert_allclose(renders.activations, expected.numpy(), rtol=1e-4, atol=1e-5)
    start = render_units(tiny, "mid.2", [3, 0, 7], settings=RenderSettings(size=24, steps=1))
    assert (renders.activations > start.activations).all()  # each unit was driven up from its start


def test_a_units_image_does_not_depend_on_its_batch_mates(tiny):
    alone = render_units(tiny, "block", [5], settings=QUICK)
    crowd = render_units(tiny, "block", [2, 5, 9, 11], settings=QUICK, images_per_step=4)
    other_crowd = render_units(tiny, "block", [1, 5], settings=QUICK, images_per_step=2)
    for renders in (crowd, other_crowd):
        row = renders.units.tolist().index(5)
        diff = np.abs(renders.images[row].astype(int) - alone.images[0].astype(int))
        assert diff.max() <= 2, "same unit, same seed: the same image whatever the batch"
        assert renders.activations[row] == pytest.approx(alone.activations[0], rel=1e-3, abs=1e-4)
    assert np.abs(crowd.images[0].astype(int) - alone.images[0].astype(int)).mean() > 5  # others differ


def test_same_seed_same_images_other_seed_other_images(tiny):
    a = render_units(tiny, "block", [1, 2], settings=QUICK, seed=11)
    b = render_units(tiny, "block", [1, 2], settings=QUICK, seed=11)
    c = render_units(tiny, "block", [1, 2], settings=QUICK, seed=12)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert a.seeds.tolist() == [unit_seed(11, "block", u, "channel", 0) for u in (1, 2)]


def test_negative_and_neuron_kinds(tiny):
    settings = RenderSettings(size=24, steps=25)
    positive = render_units(tiny, "mid.2", [4], "channel", settings)
    negative = render_units(tiny, "mid.0", [4], "negative", settings)
    up = render_units(tiny, "mid.0", [4], "channel", settings)
    assert negative.activations[0] < up.activations[0]
    assert positive.activations[0] > 0
    neuron = render_units(tiny, "mid.0", [4], "neuron", settings)
    x = torch.from_numpy(neuron.images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        out = tiny.module.mid[0](tiny.module.block(tiny.module.stem(x)))
    h, w = out.shape[-2:]
    assert neuron.activations[0] == pytest.approx(float(out[0, 4, h // 2, w // 2]), rel=1e-4, abs=1e-5)


def test_the_callers_thread_count_does_not_change_a_render():
    from loupe.pipeline.models import load_model

    model = load_model("loupe.pipeline.models.cifar_resnet:resnet20", "none", device="cpu")
    settings = RenderSettings(size=32, steps=30)
    saved = torch.get_num_threads()
    images = {}
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            images[threads] = render_units(model, "layer2", [0, 1, 2, 3], settings=settings, images_per_step=4).images
            assert torch.get_num_threads() == threads  # restored for whatever runs next (scans use all)
        pinned_to_two = render_units(model, "layer2", [0, 1, 2, 3], settings=RenderSettings(size=32, steps=30, threads=2),
                                     images_per_step=4).images
    finally:
        torch.set_num_threads(saved)
    np.testing.assert_array_equal(images[2], images[1])
    assert not np.array_equal(images[1], pinned_to_two), "the thread count does matter: pinning it is what helps"


def test_diversity_sets_are_grouped_per_unit_and_independent_of_other_units(tiny):
    settings = RenderSettings(size=24, steps=8, images_per_unit=3)
    both = render_units(tiny, "block", [2, 6], "diversity", settings, images_per_step=6)
    assert both.images.shape == (6, 24, 24, 3)
    assert both.units.tolist() == [2, 2, 2, 6, 6, 6] and both.index.tolist() == [0, 1, 2, 0, 1, 2]
    alone = render_units(tiny, "block", [6], "diversity", settings)
    assert np.abs(both.images[3:].astype(int) - alone.images.astype(int)).max() <= 2
    assert not np.array_equal(both.images[3], both.images[4])  # a set shows different images


def test_bad_requests_fail_before_any_work(tiny):
    before = hook_count(tiny.module)
    with pytest.raises(UnitError, match="out of range for layer mid.2"):
        render_units(tiny, "mid.2", [0, 16], settings=QUICK)
    with pytest.raises(LayerError, match="unknown layer 'mid.9'"):
        render_units(tiny, "mid.9", [0], settings=QUICK)
    with pytest.raises(LoupeError, match="unknown render kind 'channels'; choose one of channel, neuron, negative, diversity"):
        render_units(tiny, "mid.2", [0], "channels", QUICK)
    with pytest.raises(LoupeError, match="images_per_unit >= 2"):
        render_units(tiny, "mid.2", [0], "diversity", RenderSettings(size=24, steps=1, images_per_unit=1))
    with pytest.raises(LoupeError, match="no units"):
        render_units(tiny, "mid.2", [], settings=QUICK)
    with pytest.raises(LoupeError, match="steps"):
        RenderSettings(steps=0)
    with pytest.raises(LoupeError, match="threads"):
        RenderSettings(threads=0)
    assert hook_count(tiny.module) == before


def test_unit_seed_is_stable_and_distinct():
    assert unit_seed(0, "features.10", 3, "channel", 0) == unit_seed(0, "features.10", 3, "channel", 0)
    seeds = {unit_seed(0, "l", u, k, i) for u in range(20) for k in ("channel", "neuron") for i in range(3)}
    assert len(seeds) == 120 and all(0 <= s < 2**63 for s in seeds)
