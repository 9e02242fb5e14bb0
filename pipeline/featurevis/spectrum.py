"""The average Fourier magnitude spectrum of a set of images: MACO's fixed "natural" magnitude.

MACO (Fel et al., 2023) optimizes only the phase of an image's spectrum and keeps its magnitude
at the average magnitude of natural images, which removes the high-frequency artefacts Lucid's
parameterization produces on deep networks and ViTs. Loupe estimates that magnitude from the scan
dataset itself (never a download): `MagnitudeSpectrum` is a running mean of |rfft2| per channel
of Lucid's decorrelated colour space (as the paper's spectrum) of images resized to the render
size, following the scan statistics' protocol (add / merge / result / state / from_state), so
shards can estimate it and merge exactly. `spectrum_slope` measures how natural a set of
pictures' spectra are (photographs: close to -2).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.featurevis.param import correlate_color
from loupe.pipeline.scan.state import State, check_shape, take


class MagnitudeSpectrum:
    """Mean |rfft2(image)| over images, per colour channel, at a fixed size (height, width)."""

    def __init__(self, height: int, width: int) -> None:
        if int(height) < 2 or int(width) < 2:
            raise LoupeError(f"spectrum size must be at least 2 x 2, got {height} x {width}")
        self.height, self.width = int(height), int(width)
        self.total = np.zeros((3, self.height, self.width // 2 + 1), dtype=np.float64)
        self.count = 0

    def add(self, images: torch.Tensor | np.ndarray) -> None:
        """Fold in images: uint8 [N, 3, H, W] (as the loader gives them) or float in [0, 1]; their
        spectra are taken in Lucid's decorrelated colour space, where MACO's phases live."""
        x = torch.as_tensor(images)
        if x.ndim != 4 or x.shape[1] != 3:
            raise LoupeError(f"spectrum images must be [N, 3, H, W], got {list(x.shape)}")
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if tuple(x.shape[2:]) != (self.height, self.width):
            x = F.interpolate(x, size=(self.height, self.width), mode="bilinear", align_corners=False, antialias=True)
        magnitude = torch.fft.rfft2(correlate_color(x.double()), norm="ortho").abs().sum(dim=0)
        self.total += magnitude.numpy()
        self.count += int(x.shape[0])

    def merge(self, other: "MagnitudeSpectrum") -> "MagnitudeSpectrum":
        if (other.height, other.width) != (self.height, self.width):
            raise LoupeError(f"cannot merge spectra of {self.height}x{self.width} and {other.height}x{other.width}")
        merged = MagnitudeSpectrum(self.height, self.width)
        merged.total, merged.count = self.total + other.total, self.count + other.count
        return merged

    def result(self) -> np.ndarray:
        """float32 [3, H, W // 2 + 1]: the mean magnitude (norm="ortho")."""
        if self.count == 0:
            raise LoupeError("no images were added to the magnitude spectrum")
        return (self.total / self.count).astype(np.float32)

    def state(self) -> State:
        return {"size": np.array([self.height, self.width], dtype=np.int64), "total": self.total.copy(),
                "count": np.int64(self.count)}

    @classmethod
    def from_state(cls, state: State) -> "MagnitudeSpectrum":
        height, width = (int(v) for v in check_shape("size", take(state, "size", "int", ndim=1), (2,)))
        spectrum = cls(height, width)
        spectrum.total = check_shape("total", take(state, "total", "float", ndim=3), spectrum.total.shape).astype(np.float64)
        spectrum.count = int(take(state, "count", "int", ndim=0))
        return spectrum


def radial_power(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of the images' luminance: (frequency in cycles per image, power).

    `images` are uint8 `[N, H, W, 3]` (as renders are stored). Each image is made zero-mean and
    multiplied by a Hann window before its FFT, so the jump at the image border (which adds power
    falling as 1/f^2 whatever the picture) does not decide the result. Power is averaged over
    images and over each ring of integer radius 1 .. min(H, W) // 2.
    """
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < 4:
        raise LoupeError(f"spectrum slope needs images [N, H, W, 3] of at least 4 x 4 pixels, got {list(x.shape)}")
    gray = x.astype(np.float64).mean(axis=-1) / (255.0 if x.dtype == np.uint8 else 1.0)
    gray = gray - gray.mean(axis=(1, 2), keepdims=True)
    h, w = gray.shape[1:]
    window = np.outer(np.hanning(h), np.hanning(w))
    power = (np.abs(np.fft.fft2(gray * window)) ** 2).mean(axis=0)
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij"))
    rings = np.rint(radius).astype(np.int64)
    freqs = np.arange(1, min(h, w) // 2 + 1)
    sums = np.bincount(rings.ravel(), weights=power.ravel(), minlength=freqs[-1] + 1)
    counts = np.bincount(rings.ravel(), minlength=freqs[-1] + 1)
    return freqs.astype(np.float64), sums[freqs] / counts[freqs]


def spectrum_slope(images: np.ndarray) -> float:
    """The slope of log power against log frequency (least squares over `radial_power`'s rings):
    natural photographs are close to -2 (amplitude ~ 1/f); white noise is 0; smoother is steeper."""
    freqs, power = radial_power(images)
    slope, _ = np.polyfit(np.log(freqs), np.log(np.maximum(power, 1e-30)), 1)
    return float(slope)


__all__ = ["MagnitudeSpectrum", "radial_power", "spectrum_slope"]
