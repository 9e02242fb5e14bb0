"""Render many units of one layer in a single optimization: the cluster's unit of work.

Each batch element optimizes its own unit's objective; the loss is the sum of per-element
objectives, Adam's update is elementwise, the model runs in eval mode, and the redirected ReLU
decides per element. Each element's initial noise and transform draws come from generators seeded
by a hash of (seed, layer, unit, kind, index), so a unit's picture depends only on the model, the
layer, the unit, the kind, the settings and the seed, never on which units share its batch (up
to floating-point summation order in batched convolutions).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.featurevis import engine
from loupe.pipeline.featurevis.objectives import Activations, _gram_similarity
from loupe.pipeline.featurevis.param import generators, image as image_param
from loupe.pipeline.featurevis.render import REDIRECT_STEPS, as_loaded_model, make_progress, make_transform
from loupe.pipeline.featurevis.transforms import Transform
from loupe.pipeline.models import LoadedModel
from loupe.pipeline.models.catalog import check_unit

KINDS = ("channel", "neuron", "negative_channel", "diversity")


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
    diversity: int = 4  # images per unit for kind "diversity"
    diversity_weight: float = 100.0
    precision: str = "fp32"
    channels_last: bool = True  # NHWC weights and input for the render: ~1.5x faster convs on CPU and GPU

    def __post_init__(self) -> None:
        for name in ("size", "steps", "diversity"):
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


def _unit_measure(T: Activations, layer: str, units: torch.Tensor, kind: str) -> torch.Tensor:
    """Per element: its unit's mean over positions (channel kinds) or its value at the centre (neuron)."""
    t = T.channels_last(layer)
    spatial = t.shape[1:-1]
    flat = t.reshape(t.shape[0], -1, t.shape[-1])
    if kind == "neuron" and spatial:
        centre = 0
        for size in spatial:
            centre = centre * size + size // 2
        flat = flat[:, centre : centre + 1]
    picked = flat.gather(2, units.view(-1, 1, 1).expand(-1, flat.shape[1], 1)).squeeze(2)
    return picked.mean(1)


def _objective(layer: str, units: torch.Tensor, kind: str, settings: RenderSettings) -> Callable[[Activations], torch.Tensor]:
    """The per-element objectives, summed; diversity sets are scored per unit group, as Lucid's channel - w * diversity."""

    def inner(T: Activations) -> torch.Tensor:
        measure = _unit_measure(T, layer, units, kind)
        if kind == "negative_channel":
            return -measure.sum()
        if kind != "diversity":
            return measure.sum()
        n = settings.diversity
        groups = measure.shape[0] // n
        channel_means = measure.view(groups, n).mean(1)
        t = T.channels_last(layer)
        acts = t.reshape(groups, n, -1, t.shape[-1])
        return (channel_means - settings.diversity_weight * _gram_similarity(acts)).sum()

    return inner


def render_units(
    model: LoadedModel | nn.Module,
    layer: str,
    units: Sequence[int],
    kind: str = "channel",
    settings: RenderSettings | None = None,
    *,
    seed: int = 0,
    batch_size: int = 32,
    transforms: Sequence[Transform | Callable] | None = None,
    progress: bool | Callable[[int, float], None] = False,
) -> UnitRenders:
    """Render `units` of `layer` (kind: channel, neuron, negative_channel or diversity), `batch_size` images at a time.

    Returns uint8 images and each image's final activation (the unit's spatial mean, or its centre
    value for neurons, measured on the final quantized image without transforms; for
    negative_channel the raw mean, which the render drove down). `transforms` overrides the
    standard list (then `settings.standard_transforms` is ignored).
    """
    lm = as_loaded_model(model)
    settings = settings or RenderSettings()
    if kind not in KINDS:
        raise LoupeError(f"unknown render kind '{kind}'; choose one of {', '.join(KINDS)}")
    info = lm.layer(layer)
    unit_list = [int(u) for u in units]
    if not unit_list:
        raise LoupeError(f"no units given to render for layer {layer}")
    for unit in unit_list:
        check_unit(info, unit)
    if int(batch_size) < 1:
        raise LoupeError(f"batch_size must be >= 1, got {batch_size}")
    per_unit = settings.diversity if kind == "diversity" else 1
    if kind == "diversity" and per_unit < 2:
        raise LoupeError("kind 'diversity' needs settings.diversity >= 2 images per unit")
    units_per_batch = max(1, int(batch_size) // per_unit)
    transform = make_transform(transforms if transforms is not None else (None if settings.standard_transforms else []))
    acceleration = engine.Acceleration(settings.precision, settings.channels_last)

    rows = [(u, i) for u in unit_list for i in range(per_unit)]
    chunks = [unit_list[k : k + units_per_batch] for k in range(0, len(unit_list), units_per_batch)]
    step_fn, close = make_progress(progress, settings.steps * len(chunks), desc=f"{layer} {kind}")
    images, activations = [], []
    try:
        with engine.ForwardSession(lm, [layer], acceleration) as session:
            for chunk in chunks:
                chunk_rows = [(u, i) for u in chunk for i in range(per_unit)]
                batch_images, batch_acts = _render_batch(lm, session, layer, chunk_rows, kind, settings, seed, transform, step_fn)
                images.append(batch_images)
                activations.append(batch_acts)
    finally:
        close()
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
    rows: list[tuple[int, int]],
    kind: str,
    settings: RenderSettings,
    seed: int,
    transform,
    step_fn,
) -> tuple[np.ndarray, np.ndarray]:
    image_seeds = [unit_seed(seed, layer, u, kind, i) for u, i in rows]
    init_seeds = [stream_seed(s, "init") for s in image_seeds]
    draw_seeds = [stream_seed(s, "transforms") for s in image_seeds]
    image = image_param(
        settings.size, batch=len(rows), fft=settings.fft, decorrelate=settings.decorrelate, sd=settings.sd,
        decay_power=settings.decay_power, seeds=init_seeds,
    ).to(lm.device)
    uniforms = engine.step_uniforms(generators(draw_seeds), settings.steps, transform.n_random, lm.device)
    unit_index = torch.tensor([u for u, _ in rows], device=lm.device)
    optimizer = torch.optim.Adam(image.parameters(), lr=settings.lr)
    (final,) = engine.optimize(
        session, _objective(layer, unit_index, kind, settings), image, optimizer, transform, uniforms,
        [settings.steps], redirect_steps=REDIRECT_STEPS if settings.redirected_relu else 0, progress=step_fn,
    )
    quantized = (final * 255).round().to(torch.uint8)
    with torch.no_grad():
        as_float = quantized.float() / 255
        measure = _unit_measure(session(as_float, as_float), layer, unit_index, kind)
    return quantized.permute(0, 2, 3, 1).cpu().numpy(), measure.float().cpu().numpy()


__all__ = ["KINDS", "RenderSettings", "UnitRenders", "render_units", "stream_seed", "unit_seed"]
