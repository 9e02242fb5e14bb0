"""render_vis: Lucid's defaults, thresholds, seeds, early stop, hooks and settings restored."""

import numpy as np
import pytest
import torch
from .fv_helpers import hook_count

from loupe.pipeline.errors import LoupeError, UnitError
from loupe.pipeline.featurevis import objectives, param, render_vis, transforms

SMALL = dict(param_f=lambda: param.image(32), progress=False)


def test_thresholds_return_one_image_batch_each(tiny):
    images = render_vis(tiny, "mid.2:3", thresholds=(2, 5), seed=0, **SMALL)
    assert len(images) == 2
    for batch in images:
        assert batch.shape == (1, 32, 32, 3) and batch.dtype == np.float32
        assert batch.min() >= 0.0 and batch.max() <= 1.0
    assert not np.allclose(images[0], images[1])


def test_defaults_are_lucids_128px_image(tiny):
    (image,) = render_vis(tiny, "stem.0:1", thresholds=(1,), seed=0, progress=False)
    assert image.shape == (1, 128, 128, 3)


def test_same_seed_same_image_and_global_rng_untouched(tiny):
    state = torch.random.get_rng_state()
    a = render_vis(tiny, "block:4", thresholds=(6,), seed=3, **SMALL)[0]
    assert torch.equal(torch.random.get_rng_state(), state)
    b = render_vis(tiny, "block:4", thresholds=(6,), seed=3, **SMALL)[0]
    c = render_vis(tiny, "block:4", thresholds=(6,), seed=4, **SMALL)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_optimization_increases_the_objective(tiny):
    obj = objectives.channel("mid.2", 5)
    start, end = render_vis(tiny, obj, thresholds=(1, 40), seed=0, **SMALL)
    with torch.no_grad():
        acts = [tiny.module.mid(tiny.module.block(tiny.module.stem(torch.from_numpy(x).permute(0, 3, 1, 2))))
                for x in (start, end)]
    assert float(acts[1][:, 5].mean()) > float(acts[0][:, 5].mean()) + 0.05


def test_forward_stops_at_the_deepest_layer_read_and_is_not_upsampled(tiny):
    tiny.catalog  # the catalog's one dry run happens here, not inside the render
    seen = []
    handle = tiny.module.stem.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].shape[-1]))
    calls_before = tiny.module.tail.calls
    try:
        render_vis(tiny, objectives.channel("block", 0) + objectives.channel("mid.0", 1), thresholds=(3,), **SMALL)
    finally:
        handle.remove()
    assert tiny.module.tail.calls == calls_before  # the layers after mid.0 never ran
    assert seen == [44] * 3  # 32 px + 24 pad - 12 jitter: the image's own size, never 224


def test_no_hook_left_behind_even_on_error(tiny):
    before = hook_count(tiny.module)
    render_vis(tiny, "mid.2:0", thresholds=(2,), **SMALL)
    assert hook_count(tiny.module) == before

    def explode(step, value):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        render_vis(tiny, "mid.2:0", thresholds=(4,), param_f=lambda: param.image(32), progress=explode)
    assert hook_count(tiny.module) == before
    assert all(p.is_contiguous() for p in tiny.module.parameters())  # channels_last undone too


def test_bad_objectives_fail_before_any_work(tiny):
    with pytest.raises(UnitError, match="out of range for layer mid.2"):
        render_vis(tiny, "mid.2:99", **SMALL)
    with pytest.raises(LoupeError, match="thresholds"):
        render_vis(tiny, "mid.2:1", thresholds=(0,), **SMALL)


def test_batch_index_renders_different_units_side_by_side(tiny):
    only_first = objectives.channel("mid.2", 1, batch=0)
    early, late = render_vis(tiny, only_first, param_f=lambda: param.image(32, batch=2), thresholds=(1, 20), seed=0,
                             progress=False)
    np.testing.assert_array_equal(early[1], late[1])  # element 1 is in no objective: it never moves
    assert not np.allclose(early[0], late[0])

    both = objectives.channel("mid.2", 1, batch=0) + objectives.channel("mid.2", 2, batch=1)
    start, end = render_vis(tiny, both, param_f=lambda: param.image(32, batch=2), thresholds=(1, 30), seed=0,
                            progress=False)
    with torch.no_grad():
        acts = [tiny.module.mid(tiny.module.block(tiny.module.stem(torch.from_numpy(x).permute(0, 3, 1, 2)))).mean(dim=(2, 3))
                for x in (start, end)]
    assert acts[1][0, 1] > acts[0][0, 1] and acts[1][1, 2] > acts[0][1, 2]


def test_custom_optimizer_transforms_and_lucent_style_params(tiny):
    torch.manual_seed(0)
    pixels = torch.zeros(1, 3, 16, 16, requires_grad=True)
    frozen = render_vis(
        tiny, "mid.2:0", param_f=lambda: ([pixels], lambda: torch.sigmoid(pixels)),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.0), transforms=[transforms.jitter(2)],
        thresholds=(3,), progress=False,
    )[0]
    np.testing.assert_allclose(frozen, 0.5)


def test_input_only_objectives_need_no_forward(tiny):
    calls = tiny.module.tail.calls
    (image,) = render_vis(tiny, -objectives.L1(constant=0.5) - objectives.total_variation(), thresholds=(20,), seed=0, **SMALL)
    assert tiny.module.tail.calls == calls
    assert abs(float(image.mean()) - 0.5) < 0.05


def test_redirected_relu_revives_dead_units(tiny):
    with torch.no_grad():
        tiny.module.mid[1].bias.fill_(-50.0)  # channel 3 of mid.2 is dead for any image
    kwargs = dict(thresholds=(20,), seed=0, transforms=[], **SMALL)
    plain = render_vis(tiny, "mid.2:3", redirected_relu=False, **kwargs)[0]
    revived = render_vis(tiny, "mid.2:3", **kwargs)[0]
    initial = render_vis(tiny, "mid.2:3", **{**kwargs, "thresholds": (1,)}, optimizer=lambda p: torch.optim.SGD(p, lr=0))[0]
    assert np.allclose(plain, initial)  # zero gradient: nothing moved
    assert np.abs(revived - initial).max() > 0.01


def test_bf16_and_channels_last_paths_run(tiny):
    (image,) = render_vis(tiny, "mid.2:1", thresholds=(3,), seed=0, precision="bf16", channels_last=True, **SMALL)
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
    (plain,) = render_vis(tiny, "mid.2:1", thresholds=(3,), seed=0, channels_last=False, **SMALL)
    (fast,) = render_vis(tiny, "mid.2:1", thresholds=(3,), seed=0, channels_last=True, **SMALL)
    np.testing.assert_allclose(plain, fast, atol=1e-4)
    with pytest.raises(LoupeError, match="precision"):
        render_vis(tiny, "mid.2:1", precision="fp8", **SMALL)
