"""Parameterizations: valid RGB batches, Lucid's spectrum scaling and colour matrix, per-element seeds."""

import pytest
import torch

from loupe.pipeline.featurevis import param


@pytest.mark.parametrize(
    "make",
    [
        lambda **k: param.image(20, **k),
        lambda **k: param.image((17, 23), fft=False, **k),
        lambda **k: param.image(21, decorrelate=False, sigmoid=False, **k),
        lambda **k: param.pixel(20, **k),
        lambda **k: param.lowres((20, 24), factor=4, **k),
        lambda **k: param.cppn(20, num_layers=3, **k),
    ],
    ids=["fft", "pixel-odd", "fft-nosigmoid", "pixel", "lowres", "cppn"],
)
def test_batched_rgb_in_unit_range_with_gradients(make):
    p = make(batch=3, seeds=[1, 2, 3])
    image = p()
    assert image.shape[:2] == (3, 3) and image.shape[-2:] == (p.height, p.width)
    assert float(image.detach().min()) >= 0.0 and float(image.detach().max()) <= 1.0
    image[:, 0].mean().backward()
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in p.parameters())


@pytest.mark.parametrize("kind", ["image", "pixel", "lowres", "cppn"])
def test_an_element_depends_only_on_its_own_seed(kind):
    make = getattr(param, kind)
    alone, among = make(16, batch=1, seeds=[7]), make(16, batch=3, seeds=[5, 7, 9])

    def element(p, i):
        return torch.cat([q[i].flatten() for q in p.parameters()])

    assert torch.equal(element(alone, 0), element(among, 1))
    assert not torch.equal(element(among, 0), element(among, 1))
    assert torch.allclose(alone()[0], among()[1], atol=1e-6)


def test_cppn_elements_are_independent_networks():
    p = param.cppn(12, batch=2, num_layers=2, seeds=[0, 1])
    with torch.no_grad():
        p.out_weight.normal_()  # Lucid initializes the output layer to zero; move off it
    p()[0].sum().backward()
    assert all(q.grad[1].abs().sum() == 0 for q in p.parameters())
    assert all(q.grad[0].abs().sum() > 0 for q in p.parameters())


def test_fft_spectrum_scale_follows_lucid():
    p = param.image(32, decay_power=1.0)
    freqs = param.rfft2d_freqs(32, 32)
    expected = 1.0 / torch.clamp(freqs, min=1 / 32) * 32  # 1/f, floored at 1/size, times sqrt(h*w)
    assert torch.allclose(p.spectrum_scale, expected)
    assert p.spectrum_scale[0, 0] == pytest.approx(32 * 32)  # the DC term gets the largest weight
    assert p.spectrum.shape == (1, 3, 32, 17, 2)


def test_initial_images_are_near_gray_with_lucid_sd():
    image = param.image(64, batch=2, seeds=[0, 1])().detach()
    assert abs(float(image.mean()) - 0.5) < 0.02 and float(image.std()) < 0.05


def test_colour_decorrelation_uses_lucids_imagenet_matrix():
    matrix = param.COLOR_CORRELATION_SVD_SQRT / param.MAX_NORM_SVD_SQRT
    t = torch.zeros(1, 3, 1, 1)
    t[0, 0] = 1.0  # first decorrelated component
    rgb = param.linear_decorrelate_color(t)[0, :, 0, 0]
    assert torch.allclose(rgb, matrix[:, 0])
    assert torch.allclose(param.COLOR_CORRELATION_SVD_SQRT[0], torch.tensor([0.26, 0.09, 0.02]))


def test_unsigmoided_images_are_clamped_but_keep_inward_gradients():
    p = param.pixel(4, sigmoid=False, seeds=[0])
    with torch.no_grad():
        p.pixels.fill_(2.0)  # far above the valid range
    image = p()
    assert float(image.detach().max()) == 1.0
    (-image.sum()).backward()  # asks to go brighter: blocked, it is already saturated
    assert p.pixels.grad.abs().sum() == 0
    p.pixels.grad = None
    image = p()
    image.sum().backward()  # asks to go darker: back towards the range, allowed
    assert p.pixels.grad.abs().sum() > 0


def test_bad_arguments_name_the_setting():
    with pytest.raises(ValueError, match="seeds"):
        param.image(8, batch=2, seeds=[1])
    with pytest.raises(ValueError, match="size"):
        param.image(0)
    with pytest.raises(ValueError, match="factor"):
        param.lowres(8, factor=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: param.image((20, 23), batch=2),
        lambda: param.image((20, 23), batch=2, decorrelate=False),
        lambda: param.image((20, 23), batch=2, sigmoid=False),
        lambda: param.image((20, 23), batch=2, fft=False),
        lambda: param.pixel((20, 23), batch=2),
    ],
    ids=["fft", "fft-rgb", "fft-nosigmoid", "pixel-decorrelated", "pixel"],
)
def test_a_parameterization_can_start_from_a_picture(make):
    torch.manual_seed(0)
    picture = (torch.rand(2, 3, 20, 23) * 255).round() / 255
    p = make()
    p.match_image(picture)
    assert torch.equal((p.image() * 255).round() / 255, picture)  # quantizes back to the same uint8 picture
    with pytest.raises(ValueError, match=r"shape \[2, 3, 20, 23\]"):
        p.match_image(picture[:1])


def test_maco_starts_from_a_pictures_phase():
    torch.manual_seed(0)
    picture = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4), size=(16, 16), mode="bicubic").clamp(0, 1)
    decorrelated = torch.fft.rfft2(param.correlate_color(picture), norm="ortho")
    p = param.maco(16, decorrelated[0].abs())  # the picture's own magnitude: MACO can then show it
    p.match_image(picture)
    assert torch.allclose(torch.angle(torch.fft.rfft2(p.spatial(), norm="ortho"))[..., 1:8],
                          torch.angle(decorrelated)[..., 1:8], atol=1e-4)
    shown = p.image().flatten(1)
    assert torch.corrcoef(torch.stack([shown[0], picture.flatten()]))[0, 1] > 0.9


def test_colour_decorrelation_inverts():
    rgb = torch.rand(2, 3, 5, 5)
    assert torch.allclose(param.linear_decorrelate_color(param.correlate_color(rgb)), rgb, atol=1e-5)
