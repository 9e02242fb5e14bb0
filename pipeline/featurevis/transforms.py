"""Transformation robustness: random, differentiable jitter, scale and rotation applied before each forward.

Optimizing an image that must excite a unit under small random transformations removes the
adversarial high-frequency patterns plain gradient ascent finds (Lucid, "Feature Visualization").

Each random transform declares how many uniform numbers per batch element it consumes
(`n_random`) and maps them to its choice, so the caller controls randomness: render code draws
every element's numbers from that element's own generator, which makes an element's transforms
independent of its batch mates; called on its own (`jitter(8)(x)`), a transform draws from torch's
global generator. Every batch element gets an independent draw. Everything runs on the input's
device and is differentiable with respect to the input.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

TransformFn = Callable[[torch.Tensor], torch.Tensor]


class Transform:
    """A batched image transform `[B, C, H, W] -> [B, C, H', W']` taking `n_random` uniforms per element."""

    n_random: int = 0

    def __call__(self, x: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_random and u is None:
            u = torch.rand(x.shape[0], self.n_random, device=x.device)
        elif self.n_random:
            u = u.to(x.device)
            if u.shape != (x.shape[0], self.n_random):
                raise ValueError(f"{self!r} needs uniforms of shape ({x.shape[0]}, {self.n_random}), got {tuple(u.shape)}")
        return self.apply(x, u)

    def apply(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


def _pick(values: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Choose one of `values` per element, uniformly, from uniforms `u` in [0, 1)."""
    index = (u * len(values)).long().clamp_(0, len(values) - 1)
    return values.to(u.device)[index]


class Geometric(Transform):
    """A transform that is an affine resampling: it can be fused with its neighbours into one grid_sample."""

    def plan(self, u: torch.Tensor | None, size: tuple[int, int], like: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """`[B, 3, 3]` map from output to input pixel coordinates, and the output (h, w)."""
        raise NotImplementedError

    def apply(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        return _resample(x, [self], [u])


def _eye(like: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.eye(3, device=like.device, dtype=like.dtype).expand(batch, 3, 3).clone()


def _translation(like: torch.Tensor, batch: int, dx: torch.Tensor | float, dy: torch.Tensor | float) -> torch.Tensor:
    m = _eye(like, batch)
    m[:, 0, 2] = dx
    m[:, 1, 2] = dy
    return m


def _about_centre(linear: torch.Tensor, size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """Embed `[B, 2, 2]` (output -> input) as a 3x3 map acting about the image centre."""
    h, w = size
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    m = _eye(like, linear.shape[0])
    m[:, :2, :2] = linear
    m[:, 0, 2] = cx - linear[:, 0, 0] * cx - linear[:, 0, 1] * cy
    m[:, 1, 2] = cy - linear[:, 1, 0] * cx - linear[:, 1, 1] * cy
    return m


def _resample(x: torch.Tensor, steps: Sequence["Geometric"], us: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Apply a chain of geometric transforms with a single bilinear resampling.

    A leading constant `Pad` sets the value seen outside the image; otherwise the edge pixels extend.
    Integer shifts (pad, jitter) land exactly on pixel centres, so they copy values exactly.
    """
    b, _, h_in, w_in = x.shape
    fill = None
    size = (h_in, w_in)
    matrix = _eye(x, b)
    for index, (step, u) in enumerate(zip(steps, us)):
        if isinstance(step, Pad) and step.mode == "constant" and index == 0:
            fill = step.constant_value
        step_matrix, size = step.plan(u, size, x)
        matrix = matrix @ step_matrix
    h, w = size
    ys = torch.arange(h, device=x.device, dtype=x.dtype)
    xs = torch.arange(w, device=x.device, dtype=x.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).reshape(1, -1, 3)  # [1, h*w, 3]
    source = points @ matrix.transpose(1, 2)  # [B, h*w, 3] in input pixel coordinates
    grid = torch.stack([(2 * source[..., 0] + 1) / w_in - 1, (2 * source[..., 1] + 1) / h_in - 1], dim=-1)
    grid = grid.reshape(b, h, w, 2)
    if fill is None:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


class Pad(Geometric):
    """Pad every side by `width` pixels (constant `constant_value`, or 'reflect' / 'replicate')."""

    def __init__(self, width: int, mode: str = "reflect", constant_value: float = 0.5) -> None:
        self.width = int(width)
        self.mode = mode.lower()
        if self.mode not in ("constant", "reflect", "replicate", "circular"):
            raise ValueError(f"pad mode must be constant, reflect, replicate or circular, got '{mode}'")
        self.constant_value = float(constant_value)

    @property
    def fusable(self) -> bool:
        return self.mode == "constant"

    def plan(self, u, size, like):
        h, w = size
        return _translation(like, like.shape[0], -self.width, -self.width), (h + 2 * self.width, w + 2 * self.width)

    def apply(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        w = self.width
        if self.mode == "constant":
            return F.pad(x, (w, w, w, w), mode="constant", value=self.constant_value)
        return F.pad(x, (w, w, w, w), mode=self.mode)

    def __repr__(self) -> str:
        return f"pad({self.width}, mode='{self.mode}')"


class Jitter(Geometric):
    """Crop `d` pixels away at a random offset per element (Lucid's jitter: output is d pixels smaller)."""

    n_random = 2
    fusable = True

    def __init__(self, d: int) -> None:
        self.d = int(d)
        if self.d < 0:
            raise ValueError(f"jitter distance must be >= 0, got {d}")

    def plan(self, u, size, like):
        assert u is not None
        h, w = size
        if h - self.d < 1 or w - self.d < 1:
            raise ValueError(f"jitter({self.d}) cannot crop a {h}x{w} image")
        offsets = (u * (self.d + 1)).floor().clamp_(0, self.d).to(like.dtype)
        return _translation(like, like.shape[0], offsets[:, 1], offsets[:, 0]), (h - self.d, w - self.d)

    def __repr__(self) -> str:
        return f"jitter({self.d})"


class RandomScale(Geometric):
    """Zoom each element about its centre by a factor chosen from `scales` (>1 magnifies); size is kept."""

    n_random = 1
    fusable = True

    def __init__(self, scales: Sequence[float]) -> None:
        if not len(scales) or any(s <= 0 for s in scales):
            raise ValueError(f"random_scale needs positive scales, got {list(scales)}")
        self.scales = torch.tensor([float(s) for s in scales])

    def plan(self, u, size, like):
        assert u is not None
        s = _pick(self.scales, u[:, 0]).to(like.device, like.dtype)
        eye = torch.eye(2, device=like.device, dtype=like.dtype)
        return _about_centre(eye[None] / s[:, None, None], size, like), size

    def __repr__(self) -> str:
        return f"random_scale({self.scales.tolist()})"


class RandomRotate(Geometric):
    """Rotate each element about its centre by an angle chosen from `angles` (degrees unless units='radians')."""

    n_random = 1
    fusable = True

    def __init__(self, angles: Sequence[float], units: str = "degrees") -> None:
        if not len(angles):
            raise ValueError("random_rotate needs at least one angle")
        if units not in ("degrees", "radians"):
            raise ValueError(f"random_rotate units must be 'degrees' or 'radians', got '{units}'")
        factor = math.pi / 180.0 if units == "degrees" else 1.0
        self.angles = torch.tensor([float(a) * factor for a in angles])

    def plan(self, u, size, like):
        assert u is not None
        a = _pick(self.angles, u[:, 0]).to(like.device, like.dtype)
        cos, sin = torch.cos(a), torch.sin(a)
        # Output pixel p samples the input at R(-a) p (about the centre).
        linear = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
        return _about_centre(linear, size, like), size

    def __repr__(self) -> str:
        return f"random_rotate({len(self.angles)} angles)"


class Lambda(Transform):
    """Wrap a deterministic (or self-randomizing) function `x -> x` as a transform."""

    def __init__(self, fn: TransformFn) -> None:
        self.fn = fn

    def apply(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        return self.fn(x)

    def __repr__(self) -> str:
        return f"Lambda({getattr(self.fn, '__name__', self.fn)!r})"


class Compose(Transform):
    """Apply transforms in order, each with its own slice of the per-element uniforms.

    Runs of geometric transforms (a constant pad, jitters, scales, rotations) are fused into one
    resampling: the same maps, composed exactly, but one interpolation instead of several (sharper,
    and several times cheaper on large batches). `fuse=False` applies them one by one.
    """

    def __init__(self, transforms: Sequence[Transform | TransformFn], fuse: bool = True) -> None:
        self.transforms = [t if isinstance(t, Transform) else Lambda(t) for t in transforms]
        self.n_random = sum(t.n_random for t in self.transforms)
        self.fuse = fuse

    def apply(self, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        offset = 0
        run: list[Geometric] = []
        run_u: list[torch.Tensor | None] = []

        def flush(x: torch.Tensor) -> torch.Tensor:
            if run:
                x = _resample(x, run, run_u) if len(run) > 1 else run[0](x, run_u[0])
                run.clear()
                run_u.clear()
            return x

        for t in self.transforms:
            part = None
            if t.n_random:
                assert u is not None
                part = u[:, offset : offset + t.n_random].to(x.device)
                offset += t.n_random
            if self.fuse and isinstance(t, Geometric) and getattr(t, "fusable", False):
                if isinstance(t, Pad):
                    x = flush(x)  # a pad starts a new run: its fill applies outside that run's input
                run.append(t)
                run_u.append(part)
                continue
            x = flush(x)
            x = t(x, part)
        return flush(x)

    def __repr__(self) -> str:
        return f"compose({self.transforms!r})"


def pad(w: int, mode: str = "reflect", constant_value: float = 0.5) -> Transform:
    return Pad(w, mode=mode, constant_value=constant_value)


def jitter(d: int) -> Transform:
    return Jitter(d)


def random_scale(scales: Sequence[float]) -> Transform:
    return RandomScale(scales)


def random_rotate(angles: Sequence[float], units: str = "degrees") -> Transform:
    return RandomRotate(angles, units=units)


def compose(transforms: Sequence[Transform | TransformFn], fuse: bool = True) -> Compose:
    return Compose(transforms, fuse=fuse)


# Lucid's default list (lucid.optvis.transform.standard_transforms).
standard_transforms: list[Transform] = [
    pad(12, mode="constant", constant_value=0.5),
    jitter(8),
    random_scale([1 + (i - 5) / 50.0 for i in range(11)]),
    random_rotate(list(range(-10, 11)) + 5 * [0]),
    jitter(4),
]

__all__ = [
    "Compose",
    "Geometric",
    "Jitter",
    "Lambda",
    "Pad",
    "RandomRotate",
    "RandomScale",
    "Transform",
    "compose",
    "jitter",
    "pad",
    "random_rotate",
    "random_scale",
    "standard_transforms",
]
