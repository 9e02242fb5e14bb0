"""MACO: the phase-only parameterization keeps its magnitude spectrum exactly while the objective
climbs, and the natural magnitude is a mergeable mean of the dataset's spectra."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loupe.pipeline.featurevis import param, render_vis
from loupe.pipeline.errors import LoupeError
from loupe.pipeline.featurevis.spectrum import MagnitudeSpectrum, radial_power, spectrum_slope
from loupe.pipeline.models import capture
from loupe.pipeline.scan.state import StateError

from tests.scan.helpers import tiny_model


def natural_magnitude(size: int = 16) -> torch.Tensor:
    rng = np.random.default_rng(0)
    spectrum = MagnitudeSpectrum(size, size)
    spectrum.add(rng.integers(0, 256, (8, 3, size, size), dtype=np.uint8))
    return torch.from_numpy(spectrum.result())


def test_the_magnitude_stays_fixed_and_only_the_phase_is_optimized():
    magnitude = natural_magnitude()
    image = param.maco(16, magnitude, batch=2, seeds=[1, 2])
    assert [name for name, _ in image.named_parameters()] == ["phase"]
    spectrum = torch.fft.rfft2(image.spatial(), norm="ortho").abs()
    inner = slice(1, 16 // 2)  # columns 0 and Nyquist are Hermitian-constrained by irfft2
    assert torch.allclose(spectrum[..., inner], magnitude[None, ..., inner].expand_as(spectrum[..., inner]), rtol=1e-4, atol=1e-6)
    pixels = image()
    assert pixels.shape == (2, 3, 16, 16) and pixels.min() >= 0 and pixels.max() <= 1
    again = param.maco(16, magnitude, batch=2, seeds=[1, 2])
    assert torch.equal(again.phase, image.phase)
    assert not torch.equal(param.maco(16, magnitude, batch=2, seeds=[3, 2]).phase[0], image.phase[0])


def test_a_maco_render_raises_the_objective_and_keeps_its_spectrum():
    model = tiny_model(input_size=16)
    magnitude = natural_magnitude()
    made = []

    def param_f():
        made.append(param.maco(16, magnitude, batch=1))
        return made[-1]

    first, last = render_vis(model, "conv1:2", param_f, thresholds=(1, 40), seed=0, progress=False, transforms=[])

    def channel_mean(img: np.ndarray) -> float:
        with capture(model, ["conv1"]) as cap, torch.inference_mode():
            return float(cap.run(torch.from_numpy(img).permute(0, 3, 1, 2))["conv1"][0, 2].mean())

    assert first.shape == last.shape == (1, 16, 16, 3)
    assert channel_mean(last) > channel_mean(first) + 0.05
    assert torch.equal(made[-1].magnitude, magnitude)
    spectrum = torch.fft.rfft2(made[-1].spatial().detach(), norm="ortho").abs()[..., 1:8]
    assert torch.allclose(spectrum, magnitude[None, ..., 1:8], rtol=1e-4, atol=1e-6)


def test_spectrum_is_the_mean_of_image_spectra_and_merges_exactly():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (10, 3, 12, 12), dtype=np.uint8)
    whole = MagnitudeSpectrum(12, 12)
    whole.add(images)
    to_decorrelated = np.linalg.inv(param.COLOR_CORRELATION_SVD_SQRT.double().numpy() / param.MAX_NORM_SVD_SQRT)
    decorrelated = np.einsum("ij,njhw->nihw", to_decorrelated, images.astype(np.float64) / 255)
    expected = np.mean([np.abs(np.fft.rfft2(i, norm="ortho")) for i in decorrelated], axis=0)
    assert np.allclose(whole.result(), expected, rtol=1e-5)
    a, b = MagnitudeSpectrum(12, 12), MagnitudeSpectrum(12, 12)
    a.add(images[:3])
    b.add(images[3:])
    assert np.allclose(MagnitudeSpectrum.from_state(b.state()).merge(a).result(), whole.result(), rtol=1e-12)
    state = whole.state()
    state["total"] = state["total"][:2]
    with pytest.raises(StateError, match="total"):
        MagnitudeSpectrum.from_state(state)


def test_bad_magnitudes_are_refused():
    with pytest.raises(ValueError, match=r"shape \[3, 16, 9\]"):
        param.maco(16, torch.ones(3, 16, 16))
    with pytest.raises(ValueError, match="non-negative"):
        param.maco(16, -torch.ones(3, 16, 9))


def power_law_pictures(exponent: float, n: int = 6, size: int = 64) -> np.ndarray:
    """Grey uint8 pictures whose power is exactly 1/f^exponent, with random phases."""
    rng = np.random.default_rng(int(exponent * 10))
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.rfftfreq(size), indexing="ij"))
    f[0, 0] = 1.0
    spectrum = np.exp(2j * np.pi * rng.random((n, size, size // 2 + 1))) * f ** (-exponent / 2)
    grey = np.fft.irfft2(spectrum, s=(size, size))
    grey = (grey - grey.min()) / (grey.max() - grey.min())
    return np.repeat((grey * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0, 3.0])
def test_spectrum_slope_recovers_a_power_law(exponent):
    assert spectrum_slope(power_law_pictures(exponent)) == pytest.approx(-exponent, abs=0.15)


def test_radial_power_rings_and_bad_input():
    freqs, power = radial_power(power_law_pictures(2.0, size=32))
    assert freqs.tolist() == list(range(1, 17)) and (power > 0).all()
    with pytest.raises(LoupeError, match=r"\[N, H, W, 3\]"):
        spectrum_slope(np.zeros((2, 3, 16, 16), np.uint8))
