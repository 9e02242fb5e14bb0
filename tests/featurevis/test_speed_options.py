"""Render speed options against the default (fp32, eager, contiguous), each within a stated tolerance.

- `compile` (torch.compile of the model part of each step) and `channels_last`: the same pictures
  up to float rounding: mean difference at most half a grey level after the whole optimization.
- `precision="bf16"`: bfloat16 keeps 8 bits of mantissa, and gradient ascent amplifies any
  difference over its steps, so pictures drift apart pixel for pixel (mean ~5 grey levels after 24
  steps, ~20 after 64, on this tiny net) while reaching the same objective: each unit's final
  activation is within 10% of fp32's scale. Render quality in bf16 is checked in test_analytic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.featurevis import RenderSettings, render_units, render_vis

from .fv_helpers import natural_magnitude

#: Tolerance of a compiled or channels_last render against the default, after the whole
#: optimization: fused element-wise ops and other convolution kernels change float rounding.
MEAN_GREY_LEVELS = 0.5
ACTIVATION_RTOL = 1e-3
#: bf16: final activations within this fraction of fp32's largest |activation|.
BF16_ACTIVATION_SCALE = 0.10


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def settings(**kw) -> RenderSettings:
    return RenderSettings(**{"size": 32, "steps": 24, "threads": 1, **kw})


@pytest.mark.parametrize("kind,param,precision", [("channel", "lucid", "fp32"), ("neuron", "lucid", "fp32"),
                                                  ("diversity", "lucid", "fp32"), ("channel", "maco", "fp32"),
                                                  ("channel", "lucid", "bf16")])
def test_compiled_renders_equal_eager_within_tolerance(tiny, kind, param, precision):
    magnitude = natural_magnitude(32) if param == "maco" else None
    kw = dict(images_per_unit=2, param=param, precision=precision)
    eager = render_units(tiny, "block", [1, 5, 7], kind, settings(**kw), images_per_step=4, magnitude=magnitude)
    compiled = render_units(tiny, "block", [1, 5, 7], kind, settings(compile="default", **kw), images_per_step=4,
                            magnitude=magnitude)
    difference = np.abs(eager.images.astype(np.int16) - compiled.images.astype(np.int16))
    assert difference.mean() <= MEAN_GREY_LEVELS, difference.mean()
    np.testing.assert_allclose(compiled.activations, eager.activations, rtol=ACTIVATION_RTOL, atol=1e-4)
    if param == "maco":
        assert np.abs(compiled.alpha.astype(np.float32) - eager.alpha.astype(np.float32)).mean() < 0.01


@pytest.mark.parametrize("kind", ["channel", "neuron", "diversity"])
def test_channels_last_and_bf16_renders_stay_within_their_tolerance(tiny, kind):
    default = render_units(tiny, "block", [1, 5, 7], kind, settings(images_per_unit=2, channels_last=False),
                           images_per_step=4)
    nhwc = render_units(tiny, "block", [1, 5, 7], kind, settings(images_per_unit=2, channels_last=True),
                        images_per_step=4)
    assert np.abs(default.images.astype(np.int16) - nhwc.images.astype(np.int16)).mean() <= MEAN_GREY_LEVELS
    np.testing.assert_allclose(nhwc.activations, default.activations, rtol=ACTIVATION_RTOL, atol=1e-4)
    bf16 = render_units(tiny, "block", [1, 5, 7], kind,
                        settings(images_per_unit=2, channels_last=False, precision="bf16"), images_per_step=4)
    scale = np.abs(default.activations).max()
    assert np.abs(bf16.activations - default.activations).max() <= BF16_ACTIVATION_SCALE * scale
    assert not np.array_equal(bf16.images, default.images), "bf16 really ran in bfloat16"


def test_the_model_part_compiles_once_per_layer_across_batches_and_calls(tiny):
    counters = torch._dynamo.utils.counters
    counters.clear()
    for _ in range(2):  # two calls, three batches each
        render_units(tiny, "block", range(6), "channel", settings(steps=20, compile="default"), images_per_step=2)
    first = counters["stats"]["unique_graphs"]
    assert first == 1, dict(counters["stats"])
    render_units(tiny, "mid", range(4), "channel", settings(steps=20, compile="default"), images_per_step=2)
    assert counters["stats"]["unique_graphs"] == 2, "a new layer is one more graph"
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_render_vis_takes_the_compile_option_too(tiny):
    (eager,) = render_vis(tiny, "block:3", thresholds=(20,), seed=1, progress=False)
    (compiled,) = render_vis(tiny, "block:3", thresholds=(20,), seed=1, progress=False, compile="default")
    assert np.abs(eager - compiled).mean() * 255 <= MEAN_GREY_LEVELS
    with pytest.raises(LoupeError, match="compile must be one of"):
        render_vis(tiny, "block:3", thresholds=(2,), compile="yes", progress=False)


def test_a_model_that_cannot_be_compiled_renders_eagerly_with_a_warning(tiny, monkeypatch):
    from loupe.pipeline.featurevis import engine

    def refuse(function, **options):
        def compiled(*args, **kwargs):
            raise RuntimeError("dynamo cannot trace this model\nmore detail")
        return compiled

    eager = render_units(tiny, "block", [1, 2], "channel", settings(steps=20), images_per_step=2)
    monkeypatch.setattr(engine.torch, "compile", refuse)
    with pytest.warns(RuntimeWarning, match=r"cannot compile .* up to block \(RuntimeError: dynamo cannot trace "
                                            r"this model\); rendering eagerly"):
        fallen_back = render_units(tiny, "block", [1, 2], "channel", settings(steps=20, compile="default"),
                                   images_per_step=2)
    np.testing.assert_array_equal(fallen_back.images, eager.images)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CUDA graphs)")
@pytest.mark.parametrize("kind,param", [("channel", "lucid"), ("diversity", "lucid"), ("channel", "maco")])
def test_cuda_graph_renders_equal_eager_within_tolerance(kind, param):
    """mode "reduce-overhead": inductor plus CUDA graphs, over several batches and two sessions."""
    from loupe.pipeline.models import LoadedModel

    from .fv_helpers import IDENTITY, CATEGORIES, make_tiny

    cuda = LoadedModel.from_module(make_tiny().module, preprocessing=IDENTITY, device="cuda", name="tiny",
                                   categories=CATEGORIES)
    magnitude = natural_magnitude(32) if param == "maco" else None
    kw = dict(images_per_unit=2, param=param)
    for units in ([1, 5, 7, 9], [0, 2, 4, 6]):
        eager = render_units(cuda, "block", units, kind, settings(**kw), images_per_step=4, magnitude=magnitude)
        graphs = render_units(cuda, "block", units, kind, settings(compile="reduce-overhead", **kw),
                              images_per_step=4, magnitude=magnitude)
        difference = np.abs(eager.images.astype(np.int16) - graphs.images.astype(np.int16))
        assert difference.mean() <= MEAN_GREY_LEVELS, difference.mean()
        np.testing.assert_allclose(graphs.activations, eager.activations, rtol=ACTIVATION_RTOL, atol=1e-4)


def test_an_unknown_compile_mode_is_refused_naming_the_setting():
    with pytest.raises(LoupeError, match="compile must be one of off, default, reduce-overhead, max-autotune"):
        RenderSettings(compile="fast")
