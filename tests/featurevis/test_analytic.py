"""Analytic quality check: units with known preferred stimuli render to those stimuli.

One conv layer with hand-set kernels, then a ReLU: four oriented Gabor kernels (grayscale) and
three pure-colour kernels. A Gabor unit's render (after the ReLU, so a grating of any phase
pays) must be a grating whose dominant spatial frequency (FFT peak) points the kernel's way,
within 15 degrees; a colour unit's render (the conv's own linear output, which only colour moves)
must be dominated by its colour.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from loupe.pipeline.featurevis import RenderSettings, render_units
from loupe.pipeline.models import LoadedModel, Preprocessing

ANGLES = (0.0, 45.0, 90.0, 135.0)  # direction of each Gabor's wave vector; x = column, y = row
COLOURS = ("red", "green", "blue")
KERNEL = 21  # a wide envelope makes each Gabor sharply tuned in orientation (about +-10 degrees)


def gabor(theta_degrees: float, size: int = KERNEL, sigma: float = 4.0, wavelength: float = 6.0) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float32) - size // 2
    y, x = torch.meshgrid(r, r, indexing="ij")
    theta = math.radians(theta_degrees)
    kernel = torch.exp(-(x**2 + y**2) / (2 * sigma**2)) * torch.cos(2 * math.pi * (x * math.cos(theta) + y * math.sin(theta)) / wavelength)
    kernel = kernel - kernel.mean()  # no reward for plain brightness
    return kernel / kernel.abs().sum()


def analytic_model() -> LoadedModel:
    conv = nn.Conv2d(3, len(ANGLES) + len(COLOURS), KERNEL, padding=KERNEL // 2, bias=False)
    with torch.no_grad():
        for c, angle in enumerate(ANGLES):
            conv.weight[c] = gabor(angle).expand(3, -1, -1) / 3
        for i in range(len(COLOURS)):
            colour = torch.full((3,), -0.5)
            colour[i] = 1.0
            conv.weight[len(ANGLES) + i] = colour.view(3, 1, 1).expand(-1, KERNEL, KERNEL) / KERNEL**2
    model = nn.Sequential(conv, nn.ReLU())
    identity = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=64)
    return LoadedModel.from_module(model, preprocessing=identity, device="cpu", name="analytic")


def dominant_orientation(image: np.ndarray, min_frequency: float = 0.05, bin_degrees: float = 5.0) -> float:
    """Direction (degrees, mod 180) at which the image's FFT power peaks.

    The power spectrum is summed over frequency magnitude into orientation bins (then lightly
    smoothed), so a slightly wavy grating still has one clear peak. A Hann window hides the
    image's borders (which the optimization barely reaches), and frequencies below
    `min_frequency` cycles per pixel (blobs, not gratings) are ignored.
    """
    gray = image.astype(np.float64).mean(axis=2)
    gray = (gray - gray.mean()) * np.outer(np.hanning(gray.shape[0]), np.hanning(gray.shape[1]))
    power = np.abs(np.fft.fft2(gray)) ** 2
    fy = np.fft.fftfreq(gray.shape[0])[:, None]
    fx = np.fft.fftfreq(gray.shape[1])[None, :]
    keep = np.broadcast_to(np.hypot(fx, fy) >= min_frequency, power.shape)
    angles = np.degrees(np.arctan2(np.broadcast_to(fy, power.shape), np.broadcast_to(fx, power.shape))) % 180
    bins = int(round(180 / bin_degrees))
    index = np.round(angles[keep] / bin_degrees).astype(int) % bins  # bin k is centred on k * bin_degrees
    histogram = np.bincount(index, weights=power[keep], minlength=bins)
    smoothed = histogram + 0.5 * (np.roll(histogram, 1) + np.roll(histogram, -1))
    return float(np.argmax(smoothed)) * bin_degrees


def angle_difference(a: float, b: float) -> float:
    d = abs(a - b) % 180
    return min(d, 180 - d)


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return analytic_model()


# bf16 autocast (the CUDA speed option) runs here on the CPU: the same code path must keep quality.
PRECISIONS = ["fp32", "bf16"]


@pytest.fixture(scope="module", params=PRECISIONS)
def gratings(model, request):
    units = list(range(len(ANGLES)))
    settings = RenderSettings(size=96, steps=96, precision=request.param)
    return render_units(model, "1", units, settings=settings, images_per_step=len(units))


@pytest.fixture(scope="module", params=PRECISIONS)
def colours(model, request):
    units = [len(ANGLES) + i for i in range(len(COLOURS))]
    # Adam moves every decorrelated-colour coordinate alike, so the image first darkens, then turns
    # to its colour: give it a few hundred (cheap, 32 px) steps.
    settings = RenderSettings(size=32, steps=256, precision=request.param)
    return render_units(model, "0", units, settings=settings, images_per_step=len(units))


@pytest.mark.parametrize("unit", range(len(ANGLES)))
def test_gabor_units_render_gratings_of_their_orientation(gratings, unit):
    found = dominant_orientation(gratings.images[unit])
    assert angle_difference(found, ANGLES[unit]) <= 15, f"unit {unit}: grating at {found:.1f} deg, kernel at {ANGLES[unit]}"
    assert gratings.activations[unit] > 0


@pytest.mark.parametrize("index", range(len(COLOURS)))
def test_colour_units_render_their_colour(colours, index):
    image = colours.images[index].astype(np.float64) / 255
    means = image.reshape(-1, 3).mean(axis=0)
    others = [means[i] for i in range(3) if i != index]
    assert means[index] > max(others) + 0.25, f"{COLOURS[index]} unit rendered mean RGB {means.round(2)}"
