"""Render many units of one layer in a single optimization: the cluster's unit of work.

Each batch element optimizes its own unit's objective; the loss is the sum of per-element
objectives, Adam's update is elementwise, the model runs in eval mode, and the redirected ReLU
decides per element. Each element's initial noise and transform draws come from generators seeded
by a hash of (seed, layer, unit, kind, index), so a unit's picture depends only on the model, the
layer, the unit, the kind, the settings and the seed, never on which units share its batch (up
to floating-point summation order in batched convolutions). On CPU that order also depends on
the thread count, so a render runs with `settings.threads` whoever calls it (numerics.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch import nn

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.featurevis import engine, objectives
from loupe.pipeline.featurevis.numerics import fixed_numerics
from loupe.pipeline.featurevis.objectives import Objective
from loupe.pipeline.featurevis.param import generators, image as image_param
from loupe.pipeline.featurevis.render import REDIRECT_STEPS, as_loaded_model, make_progress, make_transform
from loupe.pipeline.featurevis.transforms import Transform
from loupe.pipeline.models import LoadedModel
from loupe.pipeline.models.catalog import check_unit

if TYPE_CHECKING:
    from loupe.pipeline.models.basis import Basis

#: The render kinds, named as in build configs: maximize a channel's mean, its centre neuron,
#: minimize the channel's mean, or maximize it with a set of mutually different images.
KINDS = ("channel", "neuron", "negative", "diversity")

Row = tuple[int, int]  # (unit, index in its diversity set)


@dataclass(frozen=True)
class RenderSettings:
    """Everything besides (model, layer, unit, kind, seed) that a rendered image depends on; Lucid defaults."""

    size: int = 128
    steps: int = 512
    lr: float = 0.05
    fft: bool = True
    decorrelate: bool = True
    sd: float = 0.01
    decay_power: float = 1.0
    standard_transforms: bool = True
    redirected_relu: bool = True
    images_per_unit: int = 4  # the size of each unit's set for kind "diversity"
    diversity_weight: float = 100.0
    precision: str = "fp32"
    channels_last: bool = True  # NHWC weights and input for the render: ~1.5x faster convs on CPU and GPU
    threads: int = 1  # CPU intra-op threads during the render: CPU sums depend on it (see numerics.py)

    def __post_init__(self) -> None:
        for name in ("size", "steps", "images_per_unit", "threads"):
            if int(getattr(self, name)) < 1:
                raise LoupeError(f"render setting {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise LoupeError(f"render setting lr must be positive, got {self.lr}")
        engine.Acceleration(self.precision, self.channels_last)  # validates precision

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class UnitRenders:
    """One row per rendered image, unit-major: `images[i]` shows `units[i]` (diversity image `index[i]`)."""

    layer: str
    kind: str
    units: np.ndarray  # int64 [n]
    index: np.ndarray  # int64 [n], position in the unit's diversity set (0 otherwise)
    images: np.ndarray  # uint8 [n, H, W, 3]
    activations: np.ndarray  # float32 [n]: the unit's activation on the final (quantized) image
    seeds: np.ndarray  # int64 [n], each image's seed (unit_seed): with the model and settings it fixes the image
    settings: RenderSettings = field(default_factory=RenderSettings)

    def __len__(self) -> int:
        return len(self.units)


def _hash_seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def unit_seed(seed: int, layer: str, unit: int, kind: str, index: int = 0) -> int:
    """The stable 63-bit seed of one image: (seed, layer, unit, kind, index in its diversity set)."""
    return _hash_seed(f"{int(seed)}|{layer}|{int(unit)}|{kind}|{int(index)}")


def stream_seed(image_seed: int, stream: str) -> int:
    """Independent random streams of one image ('init' noise, 'transforms' draws) from its seed."""
    return _hash_seed(f"{int(image_seed)}|{stream}")


def unit_values(T: objectives.Activations, layer: str, rows: Sequence[Row], kind: str,
                basis: "Basis | None" = None) -> torch.Tensor:
    """`[B]`: what each element reports: its unit's centre value (neuron) or its mean over positions
    (for a basis unit: its direction's dot product)."""
    units = [unit for unit, _ in rows]
    if basis is not None:
        vecs = basis.directions[units]
        if kind == "neuron":
            return objectives.direction_neuron_values(T, layer, vecs)
        return objectives.direction_values(T, layer, vecs)
    if kind == "neuron":
        return objectives.neuron_values(T, layer, units)
    return objectives.channel_values(T, layer, units)


def batch_objective(layer: str, rows: Sequence[Row], kind: str, settings: RenderSettings,
                    basis: "Basis | None" = None) -> Objective:
    """Every element's own objective, summed, so no element's gradient depends on another's.

    Diversity sets (consecutive rows of one unit) score as Lucid's channel - w * diversity, per set.
    With a basis, unit i is the basis's direction i (Lucid's `direction`, batched).
    """
    units = [unit for unit, _ in rows]
    if basis is not None:
        vecs = basis.directions[units]
        whole, centre = objectives.each_direction(layer, vecs), objectives.each_direction_neuron(layer, vecs)
    else:
        whole, centre = objectives.each_channel(layer, units), objectives.each_neuron(layer, units)
    if kind == "neuron":
        return centre
    if kind == "negative":
        return -whole
    if kind == "channel":
        return whole
    n = settings.images_per_unit
    return whole / n - settings.diversity_weight * objectives.diversity(layer, len(rows) // n)


def _checked_units(lm: LoadedModel, layer: str, units: Sequence[int], kind: str, settings: RenderSettings,
                   images_per_step: int, basis: "Basis | None" = None) -> list[int]:
    """The request's units, or a LoupeError naming the kind, layer, unit or setting at fault."""
    if kind not in KINDS:
        raise LoupeError(f"unknown render kind '{kind}'; choose one of {', '.join(KINDS)}")
    info = lm.layer(layer)
    unit_list = [int(u) for u in units]
    if not unit_list:
        raise LoupeError(f"no units given to render for layer {layer}")
    if basis is not None:
        basis.check_layer(info.channels)
        bad = [u for u in unit_list if not 0 <= u < basis.units]
        if bad:
            raise LoupeError(f"unit {bad[0]} is outside basis {basis.source} of layer {layer} ({basis.units} units)")
    else:
        for unit in unit_list:
            check_unit(info, unit)
    if int(images_per_step) < 1:
        raise LoupeError(f"images_per_step must be >= 1, got {images_per_step}")
    if kind == "diversity" and settings.images_per_unit < 2:
        raise LoupeError("kind 'diversity' needs settings.images_per_unit >= 2")
    return unit_list


def _batches(units: list[int], per_unit: int, images_per_step: int) -> list[list[Row]]:
    """Rows per optimization: whole units (with their diversity sets), about `images_per_step` images each."""
    units_per_batch = max(1, int(images_per_step) // per_unit)
    return [
        [(u, i) for u in units[k : k + units_per_batch] for i in range(per_unit)]
        for k in range(0, len(units), units_per_batch)
    ]


def render_units(
    model: LoadedModel | nn.Module,
    layer: str,
    units: Sequence[int],
    kind: str = "channel",
    settings: RenderSettings | None = None,
    *,
    seed: int = 0,
    images_per_step: int = 32,
    transforms: Sequence[Transform | Callable] | None = None,
    progress: bool | Callable[[int, float], None] = False,
    basis: "Basis | None" = None,
) -> UnitRenders:
    """Render `units` of `layer` (kind: channel, neuron, negative or diversity), `images_per_step` images at a time.

    Returns uint8 images and each image's final activation (the unit's spatial mean, or its centre
    value for neurons, measured on the final quantized image without transforms; for negative
    the raw mean, which the render drove down). `transforms` overrides the standard list (then
    `settings.standard_transforms` is ignored). Runs under `fixed_numerics(settings.threads)`.
    With a `basis`, units index its directions (SAE latents, any directions) instead of channels.
    """
    lm = as_loaded_model(model)
    settings = settings or RenderSettings()
    unit_list = _checked_units(lm, layer, units, kind, settings, images_per_step, basis)
    per_unit = settings.images_per_unit if kind == "diversity" else 1
    transform = make_transform(transforms if transforms is not None else (None if settings.standard_transforms else []))
    acceleration = engine.Acceleration(settings.precision, settings.channels_last)
    batches = _batches(unit_list, per_unit, images_per_step)
    step_fn, close = make_progress(progress, settings.steps * len(batches), desc=f"{layer} {kind}")
    images, activations = [], []
    try:
        with fixed_numerics(settings.threads), engine.ForwardSession(lm, [layer], acceleration) as session:
            for rows in batches:
                batch_images, batch_acts = _render_batch(lm, session, layer, rows, kind, settings, seed, transform,
                                                         step_fn, basis)
                images.append(batch_images)
                activations.append(batch_acts)
    finally:
        close()
    rows = [row for batch in batches for row in batch]
    return UnitRenders(
        layer=layer,
        kind=kind,
        units=np.array([u for u, _ in rows], dtype=np.int64),
        index=np.array([i for _, i in rows], dtype=np.int64),
        images=np.concatenate(images),
        activations=np.concatenate(activations),
        seeds=np.array([unit_seed(seed, layer, u, kind, i) for u, i in rows], dtype=np.int64),
        settings=settings,
    )


def _render_batch(
    lm: LoadedModel,
    session: engine.ForwardSession,
    layer: str,
    rows: list[Row],
    kind: str,
    settings: RenderSettings,
    seed: int,
    transform,
    step_fn,
    basis: "Basis | None" = None,
) -> tuple[np.ndarray, np.ndarray]:
    image_seeds = [unit_seed(seed, layer, u, kind, i) for u, i in rows]
    init_seeds = [stream_seed(s, "init") for s in image_seeds]
    draw_seeds = [stream_seed(s, "transforms") for s in image_seeds]
    image = image_param(
        settings.size, batch=len(rows), fft=settings.fft, decorrelate=settings.decorrelate, sd=settings.sd,
        decay_power=settings.decay_power, seeds=init_seeds,
    ).to(lm.device)
    uniforms = engine.step_uniforms(generators(draw_seeds), settings.steps, transform.n_random, lm.device)
    optimizer = torch.optim.Adam(image.parameters(), lr=settings.lr)
    (final,) = engine.optimize(
        session, batch_objective(layer, rows, kind, settings, basis), image, optimizer, transform, uniforms,
        [settings.steps], redirect_steps=REDIRECT_STEPS if settings.redirected_relu else 0, progress=step_fn,
    )
    quantized = (final * 255).round().to(torch.uint8)
    with torch.no_grad():
        as_float = quantized.float() / 255
        measure = unit_values(session(as_float, as_float), layer, rows, kind, basis)
    return quantized.permute(0, 2, 3, 1).cpu().numpy(), measure.float().cpu().numpy()


__all__ = [
    "KINDS", "RenderSettings", "UnitRenders", "batch_objective", "render_units", "stream_seed", "unit_seed",
    "unit_values",
]
