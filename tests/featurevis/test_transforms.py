"""Transforms: Lucid's list, exact crops and pads, per-element draws, differentiability, fusion."""

import pytest
import torch

from loupe.pipeline.featurevis import transforms as T


def ramp(batch: int = 1, size: int = 24) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    return torch.stack([xs, ys, xs * ys]).expand(batch, -1, -1, -1).clone()


def test_standard_transforms_are_lucids_default_list():
    pad, jitter8, scale, rotate, jitter4 = T.standard_transforms
    assert isinstance(pad, T.Pad) and (pad.width, pad.mode, pad.constant_value) == (12, "constant", 0.5)
    assert isinstance(jitter8, T.Jitter) and jitter8.d == 8
    assert torch.allclose(scale.scales, torch.tensor([1 + (i - 5) / 50 for i in range(11)]))
    degrees = torch.tensor(list(range(-10, 11)) + 5 * [0], dtype=torch.float32)
    assert torch.allclose(rotate.angles, degrees * torch.pi / 180)
    assert isinstance(jitter4, T.Jitter) and jitter4.d == 4
    out = T.compose(T.standard_transforms)(torch.rand(2, 3, 128, 128))
    assert out.shape == (2, 3, 140, 140)  # 128 + 2*12 - 8 - 4: never resized to 224


def test_pad_modes():
    x = ramp()
    padded = T.pad(3, mode="constant", constant_value=0.25)(x)
    assert padded.shape[-1] == 30 and torch.all(padded[..., :3, :] == 0.25)
    assert torch.equal(padded[..., 3:-3, 3:-3], x)
    reflected = T.pad(2)(x)  # Lucid's default mode is reflect
    assert torch.equal(reflected[..., 2, 0], x[..., 0, 2])
    with pytest.raises(ValueError, match="pad mode"):
        T.pad(2, mode="wrap-around")


def test_jitter_is_an_exact_crop_at_each_elements_own_offset():
    x = torch.rand(3, 3, 20, 20)
    u = torch.tensor([[0.0, 0.0], [0.99, 0.0], [0.5, 0.99]])  # offsets (0,0), (4,0), (2,4)
    out = T.jitter(4)(x, u)
    assert out.shape == (3, 3, 16, 16)
    for b, (oy, ox) in enumerate([(0, 0), (4, 0), (2, 4)]):
        assert torch.allclose(out[b], x[b, :, oy:oy + 16, ox:ox + 16], atol=1e-6)


def test_identity_scale_and_rotation_leave_the_image_alone():
    x = ramp(2)
    u = torch.zeros(2, 1)
    assert torch.allclose(T.random_scale([1.0])(x, u), x, atol=1e-6)
    assert torch.allclose(T.random_rotate([0])(x, u), x, atol=1e-6)


def test_scale_and_rotation_act_about_the_centre():
    x = torch.zeros(1, 1, 21, 21)
    x[..., 10, 14] = 1.0  # 4 px right of the centre
    rotated = T.random_rotate([90])(x, torch.zeros(1, 1))
    peak = divmod(int(rotated.argmax()), 21)
    assert peak in ((6, 10), (14, 10))  # a quarter turn moves it 4 px above or below the centre
    zoomed = T.random_scale([2.0])(ramp(1, 21), torch.zeros(1, 1))
    assert torch.allclose(zoomed[..., 10, 10], ramp(1, 21)[..., 10, 10], atol=1e-6)  # centre fixed
    assert float(zoomed[0, 0, 10, 20]) == pytest.approx(0.75, abs=0.03)  # edge shows the half-way column


def test_each_element_draws_independently_and_depends_only_on_its_own_uniforms():
    pipeline = T.compose(T.standard_transforms)
    x = ramp(4, 32)
    u = torch.rand(4, pipeline.n_random, generator=torch.Generator().manual_seed(0))
    together = pipeline(x, u)
    alone = pipeline(x[2:3], u[2:3])
    assert torch.allclose(together[2:3], alone, atol=1e-6)
    drawn = pipeline(x)  # no uniforms given: drawn per element from the global generator
    assert not torch.allclose(drawn[0], drawn[1])


def test_transforms_are_differentiable():
    x = ramp(2, 32).requires_grad_()
    out = T.compose(T.standard_transforms)(x)
    out[0].sum().backward()
    assert x.grad[0].abs().sum() > 0
    assert x.grad[1].abs().sum() == 0  # element 1 never reaches element 0's output


def test_fused_chain_matches_applying_the_steps_one_by_one():
    x = ramp(2, 64)
    chain = [T.pad(6, mode="constant", constant_value=0.5), T.jitter(4), T.random_scale([1.05]), T.random_rotate([5]), T.jitter(2)]
    u = torch.rand(2, T.compose(chain).n_random, generator=torch.Generator().manual_seed(1))
    fused = T.compose(chain)(x, u)
    stepwise = T.compose(chain, fuse=False)(x, u)
    assert fused.shape == stepwise.shape == (2, 3, 70, 70)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # away from the corners' fill
    assert (fused - stepwise)[inner].abs().max() < 0.02


def test_plain_functions_join_a_pipeline_and_bad_uniforms_are_refused():
    pipeline = T.compose([T.jitter(2), lambda x: x * 0 + 0.5])
    assert torch.all(pipeline(torch.rand(1, 3, 8, 8)) == 0.5)
    with pytest.raises(ValueError, match="uniforms of shape"):
        T.jitter(2)(torch.rand(2, 3, 8, 8), torch.rand(3, 2))
