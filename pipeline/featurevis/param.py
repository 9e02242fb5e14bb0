"""Image parameterizations: what the optimizer actually changes, and how it becomes an RGB image.

Lucid's finding is that the choice of parameterization matters as much as the objective: an
image described by a scaled Fourier spectrum in a decorrelated colour space optimizes into
natural-looking pictures, where raw pixels give high-frequency noise. Every parameterization here
is an `nn.Module` whose `forward()` returns a batch `[B, 3, H, W]` of RGB values in [0, 1], and
whose parameters are the only tensors render_vis optimizes.

Random initial values come from one `torch.Generator` per batch element when `seeds` is given, so
an element's starting point does not depend on its batch mates (what batched unit rendering needs);
otherwise they come from torch's global generator (seeded by render_vis's `seed=`). `match_image`
replaces the random start by a given picture (feature accentuation): Lucid's FFT and pixel images
invert exactly; MACO takes the picture's phase.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Square root of the colour correlation matrix of ImageNet, from Lucid (rows: R, G, B).
COLOR_CORRELATION_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float32
)
MAX_NORM_SVD_SQRT = float(COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max())
COLOR_MEAN = (0.48, 0.46, 0.41)

Size = int | tuple[int, int]


def _hw(size: Size) -> tuple[int, int]:
    """(height, width) from an int (square) or an (h, w) pair, validated."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"image size must be positive, got {size}")
    return int(h), int(w)


def _check_batch(batch: int, seeds: Sequence[int] | None) -> int:
    if int(batch) < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if seeds is not None and len(seeds) != batch:
        raise ValueError(f"seeds must have one entry per batch element ({batch}), got {len(seeds)}")
    return int(batch)


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per seed; CPU so the same seed gives the same numbers on every device."""
    return [torch.Generator().manual_seed(int(s) % (2**63)) for s in seeds]


def random_normal(
    shape: Sequence[int],
    batch: int,
    sd: float,
    seeds: Sequence[int] | None = None,
    gens: Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """A `[batch, *shape]` tensor of N(0, sd²) noise, drawn per element from its own generator if given."""
    if gens is None and seeds is not None:
        gens = generators(seeds)
    if gens is None:
        return torch.randn(batch, *shape) * sd
    return torch.stack([torch.randn(*shape, generator=g) for g in gens]) * sd


def rfft2d_freqs(h: int, w: int) -> torch.Tensor:
    """Spatial frequency magnitude of each coefficient of a real 2-D FFT of an h x w image."""
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def linear_decorrelate_color(t: torch.Tensor) -> torch.Tensor:
    """Map decorrelated colour coordinates to RGB with Lucid's normalized ImageNet correlation matrix."""
    matrix = (COLOR_CORRELATION_SVD_SQRT / MAX_NORM_SVD_SQRT).to(t.device, t.dtype)
    return torch.einsum("ij,bj...->bi...", matrix, t)


class _ConstrainUnitRange(torch.autograd.Function):
    """Clamp to [-1, 1] but let gradients through when they would move a value back inside (Lucid's L-inf constraint)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x.clamp(-1.0, 1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        inside = x.abs() <= 1.0
        # A descent step moves x by -grad: keep grads that push an outside value back towards the range.
        inward = ((x > 1.0) & (grad > 0)) | ((x < -1.0) & (grad < 0))
        return grad * (inside | inward).to(grad.dtype)


def correlate_color(rgb: torch.Tensor) -> torch.Tensor:
    """Inverse of `linear_decorrelate_color`: decorrelated colour coordinates of RGB values `[B, 3, ...]`."""
    matrix = torch.linalg.inv((COLOR_CORRELATION_SVD_SQRT / MAX_NORM_SVD_SQRT).double()).to(rgb.device, rgb.dtype)
    return torch.einsum("ij,bj...->bi...", matrix, rgb)


#: How far from 0 and 1 a target pixel is pulled before inverting the sigmoid (logit(0) is -inf);
#: below half a uint8 step, so a matched uint8 image quantizes back to itself.
UNIT_MARGIN = 1e-3


def logit(rgb: torch.Tensor) -> torch.Tensor:
    """The sigmoid's inverse, finite on [0, 1] (values are kept UNIT_MARGIN away from the ends)."""
    p = rgb.clamp(UNIT_MARGIN, 1 - UNIT_MARGIN)
    return torch.log(p) - torch.log1p(-p)


def from_valid_rgb(rgb: torch.Tensor, decorrelate: bool = False, sigmoid: bool = True) -> torch.Tensor:
    """The unconstrained values that `to_valid_rgb` maps to `rgb` (`[B, 3, H, W]` in [0, 1]): starting
    an optimization from a given picture (feature accentuation) inverts the parameterization."""
    if sigmoid:
        t = logit(rgb)
    elif decorrelate:
        t = rgb - torch.tensor(COLOR_MEAN, device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    else:
        t = rgb
    return correlate_color(t) if decorrelate else t


def to_valid_rgb(t: torch.Tensor, decorrelate: bool = False, sigmoid: bool = True) -> torch.Tensor:
    """Turn an unconstrained `[B, 3, H, W]` tensor into RGB in [0, 1], as Lucid's `to_valid_rgb`."""
    if decorrelate:
        t = linear_decorrelate_color(t)
    if decorrelate and not sigmoid:
        t = t + torch.tensor(COLOR_MEAN, device=t.device, dtype=t.dtype).view(1, 3, 1, 1)
    if sigmoid:
        return torch.sigmoid(t)
    return _ConstrainUnitRange.apply(2 * t - 1) / 2 + 0.5


class Parameterization(nn.Module):
    """Base class: `forward()` returns RGB `[B, 3, H, W]` in [0, 1]; parameters are what gets optimized.

    The constructor does the set-up every parameterization shares: a validated size and batch
    (with one seed per element when `seeds` is given).
    """

    batch: int
    height: int
    width: int

    def __init__(self, size: Size | None = None, batch: int = 1, seeds: Sequence[int] | None = None) -> None:
        super().__init__()
        if size is not None:
            self.height, self.width = _hw(size)
            self.batch = _check_batch(batch, seeds)

    def image(self) -> torch.Tensor:
        """The current image, detached, clamped to [0, 1]."""
        with torch.no_grad():
            return self().detach().clamp(0, 1)

    def device_of(self) -> torch.device:
        """Where the parameters live (CPU for a parameterization without any)."""
        return next(self.parameters(), torch.empty(0)).device

    def match_image(self, rgb: torch.Tensor) -> None:
        """Set the parameters so that `forward()` shows `rgb` (`[B, 3, H, W]` in [0, 1]): an optimization
        that starts from a picture instead of noise (feature accentuation)."""
        raise NotImplementedError(f"{type(self).__name__} cannot start from a given image")


def _check_target(p: Parameterization, rgb: torch.Tensor) -> None:
    expected = (p.batch, 3, p.height, p.width)
    if tuple(rgb.shape) != expected:
        raise ValueError(f"a start image for this parameterization must have shape {list(expected)}, "
                         f"got {list(rgb.shape)}")


class _ColourParameterization(Parameterization):
    """A parameterization of unconstrained colour values turned into RGB by `to_valid_rgb`."""

    def __init__(self, size: Size, batch: int, seeds: Sequence[int] | None, decorrelate: bool, sigmoid: bool) -> None:
        super().__init__(size, batch, seeds)
        self.decorrelate, self.sigmoid = decorrelate, sigmoid

    def _rgb(self, t: torch.Tensor) -> torch.Tensor:
        return to_valid_rgb(t, decorrelate=self.decorrelate, sigmoid=self.sigmoid)

    def _unrgb(self, rgb: torch.Tensor) -> torch.Tensor:
        """Checked `[B, 3, H, W]` target in [0, 1] -> the unconstrained values `_rgb` maps onto it."""
        _check_target(self, rgb)
        return from_valid_rgb(rgb.to(self.device_of(), torch.float32), self.decorrelate, self.sigmoid)


class FFTImage(_ColourParameterization):
    """An image described by its Fourier spectrum, scaled by 1/frequency^decay_power (Lucid's fft_image)."""

    def __init__(
        self,
        size: Size,
        batch: int = 1,
        sd: float = 0.01,
        decay_power: float = 1.0,
        decorrelate: bool = True,
        sigmoid: bool = True,
        seeds: Sequence[int] | None = None,
    ) -> None:
        super().__init__(size, batch, seeds, decorrelate, sigmoid)
        freqs = rfft2d_freqs(self.height, self.width)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / max(self.height, self.width)) ** decay_power
        # sqrt(pixels) makes the transform unitary, so pixel-scale learning rates work (as Lucid).
        scale = scale * math.sqrt(self.height * self.width)
        self.register_buffer("spectrum_scale", scale.float())
        fh, fw = freqs.shape
        self.spectrum = nn.Parameter(random_normal((3, fh, fw, 2), self.batch, sd, seeds))

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.spectrum_scale
        return self._rgb(torch.fft.irfft2(spectrum, s=(self.height, self.width)) / 4.0)

    def match_image(self, rgb: torch.Tensor) -> None:
        """Invert forward(): the spectrum of 4 * the unconstrained image, divided by the frequency scale."""
        spectrum = torch.fft.rfft2(4.0 * self._unrgb(rgb)) / self.spectrum_scale
        with torch.no_grad():
            self.spectrum.copy_(torch.view_as_real(spectrum))


class PixelImage(_ColourParameterization):
    """One free parameter per pixel and colour channel (Lucid's pixel_image)."""

    def __init__(
        self,
        size: Size,
        batch: int = 1,
        sd: float = 0.01,
        decorrelate: bool = True,
        sigmoid: bool = True,
        seeds: Sequence[int] | None = None,
    ) -> None:
        super().__init__(size, batch, seeds, decorrelate, sigmoid)
        self.pixels = nn.Parameter(random_normal((3, self.height, self.width), self.batch, sd, seeds))

    def forward(self) -> torch.Tensor:
        return self._rgb(self.pixels)

    def match_image(self, rgb: torch.Tensor) -> None:
        with torch.no_grad():
            self.pixels.copy_(self._unrgb(rgb))


class LowresImage(_ColourParameterization):
    """A coarse pixel grid bilinearly upsampled to full size: smooth images, few parameters (Lucid's lowres_tensor)."""

    def __init__(
        self,
        size: Size,
        batch: int = 1,
        factor: int = 4,
        sd: float = 0.01,
        decorrelate: bool = True,
        sigmoid: bool = True,
        seeds: Sequence[int] | None = None,
    ) -> None:
        super().__init__(size, batch, seeds, decorrelate, sigmoid)
        if int(factor) < 1:
            raise ValueError(f"lowres factor must be >= 1, got {factor}")
        low = (max(1, math.ceil(self.height / factor)), max(1, math.ceil(self.width / factor)))
        self.low = nn.Parameter(random_normal((3, *low), self.batch, sd, seeds))

    def forward(self) -> torch.Tensor:
        return self._rgb(F.interpolate(self.low, size=(self.height, self.width), mode="bilinear", align_corners=False))


def _composite_activation(x: torch.Tensor) -> torch.Tensor:
    """Lucid's CPPN nonlinearity: atan and atan², each scaled to unit RMS for N(0, 1) input."""
    x = torch.atan(x)
    return torch.cat([x / 0.67, (x * x) / 0.6], dim=1)


class CPPNImage(Parameterization):
    """A compositional pattern-producing network mapping (x, y) to RGB; one independent network per batch element.

    Each element has its own weights (batched 1x1 layers via bmm), so elements never interact.
    Lucid's advice applies: use a smaller learning rate (about 0.005) than for image params.
    """

    def __init__(
        self,
        size: Size,
        batch: int = 1,
        num_output_channels: int = 3,
        num_hidden_channels: int = 24,
        num_layers: int = 8,
        normalize: bool = False,
        seeds: Sequence[int] | None = None,
    ) -> None:
        super().__init__(size, batch, seeds)
        self.normalize = normalize
        r = 3.0**0.5  # std of the coordinate range is 1
        ys = torch.linspace(-r, r, self.height)
        xs = torch.linspace(-r, r, self.width)
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        self.register_buffer("coords", torch.stack([x, y]).reshape(2, -1))
        gens = generators(seeds) if seeds is not None else None
        weights, biases = [], []
        fan_in = 2
        for _ in range(num_layers):
            weights.append(nn.Parameter(self._glorot(num_hidden_channels, fan_in, gens)))
            biases.append(nn.Parameter(torch.zeros(self.batch, num_hidden_channels, 1)))
            fan_in = 2 * num_hidden_channels  # the composite activation doubles the channels
        self.hidden_weights = nn.ParameterList(weights)
        self.hidden_biases = nn.ParameterList(biases)
        self.out_weight = nn.Parameter(torch.zeros(self.batch, num_output_channels, fan_in))
        self.out_bias = nn.Parameter(torch.zeros(self.batch, num_output_channels, 1))

    def _glorot(self, fan_out: int, fan_in: int, gens: Sequence[torch.Generator] | None) -> torch.Tensor:
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        if gens is None:
            u = torch.rand(self.batch, fan_out, fan_in)
        else:
            u = torch.stack([torch.rand(fan_out, fan_in, generator=g) for g in gens])
        return (2 * u - 1) * bound

    def forward(self) -> torch.Tensor:
        net = self.coords.unsqueeze(0).expand(self.batch, -1, -1)
        for weight, bias in zip(self.hidden_weights, self.hidden_biases):
            net = torch.bmm(weight, net) + bias
            if self.normalize:
                net = (net - net.mean(dim=2, keepdim=True)) / (net.std(dim=2, keepdim=True) + 1e-8)
            net = _composite_activation(net)
        rgb = torch.sigmoid(torch.bmm(self.out_weight, net) + self.out_bias)
        return rgb.reshape(self.batch, -1, self.height, self.width)


class MacoImage(Parameterization):
    """MACO (Fel et al., 2023): only the Fourier phase is optimized; the magnitude stays fixed at a
    natural spectrum (`spectrum.MagnitudeSpectrum` of the scan dataset), so the image keeps
    natural-image statistics however hard the objective pushes.

    As in the paper, the spectrum lives in Lucid's decorrelated colour space: each of its three
    channels has its own phase, the image is standardized (over all channels, so their balance
    stays the dataset's), mapped to RGB by Lucid's colour matrix, then into [0, 1] by a sigmoid
    (`values_range` spread). Independent phases per RGB channel would give uncorrelated colour
    noise instead of natural colours.
    """

    def __init__(self, size: Size, magnitude: torch.Tensor, batch: int = 1, values_range: float = 2.0,
                 seeds: Sequence[int] | None = None) -> None:
        super().__init__(size, batch, seeds)
        magnitude = torch.as_tensor(magnitude, dtype=torch.float32)
        expected = (3, self.height, self.width // 2 + 1)
        if tuple(magnitude.shape) != expected:
            raise ValueError(f"maco magnitude must have shape {list(expected)} for a {self.height}x{self.width} image "
                             f"(rfft2 of 3 colour channels), got {list(magnitude.shape)}")
        if not torch.isfinite(magnitude).all() or (magnitude < 0).any():
            raise ValueError("maco magnitude must be finite and non-negative")
        self.register_buffer("magnitude", magnitude)
        self.values_range = float(values_range)
        gens = generators(seeds) if seeds is not None else None
        phase = (random_normal(expected, self.batch, 1.0, gens=gens) * math.pi).float()
        self.phase = nn.Parameter(phase)

    def spatial(self) -> torch.Tensor:
        """The decorrelated-colour image before standardization: irfft2 of magnitude * exp(i * phase)."""
        spectrum = torch.polar(self.magnitude.expand_as(self.phase), self.phase)
        return torch.fft.irfft2(spectrum, s=(self.height, self.width), norm="ortho")

    def forward(self) -> torch.Tensor:
        x = self.spatial()
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
        return torch.sigmoid(linear_decorrelate_color((x - mean) / std) * self.values_range)

    def match_image(self, rgb: torch.Tensor) -> None:
        """Take the picture's Fourier phase (in decorrelated colour). Only the phase: the magnitude stays
        the natural one and MACO's standardization fixes mean and contrast, so the start shows the
        picture's layout and edges (Oppenheim & Lim: the phase carries them), not its exact pixels."""
        _check_target(self, rgb)
        decorrelated = correlate_color(rgb.to(self.phase.device, torch.float32))
        with torch.no_grad():
            self.phase.copy_(torch.angle(torch.fft.rfft2(decorrelated, norm="ortho")))


def maco(size: Size, magnitude: torch.Tensor, batch: int = 1, values_range: float = 2.0,
         seeds: Sequence[int] | None = None) -> Parameterization:
    """MACO's phase-only parameterization over a fixed magnitude spectrum `[3, H, W // 2 + 1]`."""
    return MacoImage(size, magnitude, batch, values_range=values_range, seeds=seeds)


def image(
    size: Size,
    batch: int = 1,
    fft: bool = True,
    decorrelate: bool = True,
    sigmoid: bool = True,
    sd: float = 0.01,
    decay_power: float = 1.0,
    seeds: Sequence[int] | None = None,
) -> Parameterization:
    """Lucid's default image parameterization: FFT spectrum (or pixels) in decorrelated colour, through a sigmoid."""
    if fft:
        return FFTImage(size, batch, sd=sd, decay_power=decay_power, decorrelate=decorrelate, sigmoid=sigmoid, seeds=seeds)
    return PixelImage(size, batch, sd=sd, decorrelate=decorrelate, sigmoid=sigmoid, seeds=seeds)


def pixel(
    size: Size,
    batch: int = 1,
    decorrelate: bool = False,
    sigmoid: bool = True,
    sd: float = 0.01,
    seeds: Sequence[int] | None = None,
) -> Parameterization:
    """Plain per-pixel parameters (no colour decorrelation by default): the naive baseline."""
    return PixelImage(size, batch, sd=sd, decorrelate=decorrelate, sigmoid=sigmoid, seeds=seeds)


def lowres(
    size: Size,
    batch: int = 1,
    factor: int = 4,
    decorrelate: bool = True,
    sigmoid: bool = True,
    sd: float = 0.01,
    seeds: Sequence[int] | None = None,
) -> Parameterization:
    """A grid `factor` times coarser than the image, bilinearly upsampled."""
    return LowresImage(size, batch, factor=factor, sd=sd, decorrelate=decorrelate, sigmoid=sigmoid, seeds=seeds)


def cppn(
    size: Size,
    batch: int = 1,
    num_output_channels: int = 3,
    num_hidden_channels: int = 24,
    num_layers: int = 8,
    normalize: bool = False,
    seeds: Sequence[int] | None = None,
) -> Parameterization:
    """A CPPN image (Lucid's param.cppn): smooth, resolution-independent patterns."""
    return CPPNImage(
        size, batch, num_output_channels=num_output_channels, num_hidden_channels=num_hidden_channels,
        num_layers=num_layers, normalize=normalize, seeds=seeds,
    )


__all__ = [
    "COLOR_CORRELATION_SVD_SQRT",
    "CPPNImage",
    "FFTImage",
    "LowresImage",
    "MacoImage",
    "Parameterization",
    "PixelImage",
    "correlate_color",
    "cppn",
    "from_valid_rgb",
    "image",
    "linear_decorrelate_color",
    "lowres",
    "maco",
    "pixel",
    "rfft2d_freqs",
    "to_valid_rgb",
]
