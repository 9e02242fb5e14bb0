"""Render many units of one layer in a single optimization: the cluster's unit of work.

Each batch element optimizes its own unit's objective; the loss is the sum of per-element
objectives, Adam's update is elementwise, the model runs in eval mode, and the redirected ReLU
decides per element. Each element's initial noise and transform draws come from generators seeded
by a hash of (seed, layer, unit, kind, index), so a unit's picture depends only on the model, the
layer, the unit, the kind, the settings and the seed, never on which units share its batch (up
to floating-point summation order in batched convolutions). On CPU that order also depends on
the thread count, so a render runs with `settings.threads` whoever calls it (numerics.py).

`settings.param` picks the parameterization: "lucid" (Lucid's FFT image in decorrelated colour)
or "maco" (MACO's phase-only image over a natural magnitude spectrum given as `magnitude=`). MACO
renders also return a transparency map (`UnitRenders.alpha`): where, over the whole optimization,
the objective's gradient fell on the image. `start_images=` starts from pictures instead of noise
and `settings.accentuation_weight` keeps each render near its picture (feature accentuation).
See docs/feature-vis.md.
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
from loupe.pipeline.featurevis.param import Parameterization, generators, image as image_param, maco
from loupe.pipeline.featurevis.render import REDIRECT_STEPS, as_loaded_model, make_progress, make_transform
from loupe.pipeline.featurevis.transforms import Transform
from loupe.pipeline.models import LoadedModel
from loupe.pipeline.models.catalog import check_unit

if TYPE_CHECKING:
    from loupe.pipeline.models.basis import Basis

#: The render kinds, named as in build configs: maximize a channel's mean, its centre neuron,
#: minimize the channel's mean, or maximize it with a set of mutually different images.
KINDS = ("channel", "neuron", "negative", "diversity")
#: The image parameterizations a render can use (`RenderSettings.param`).
PARAMS = ("lucid", "maco")

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
    compile: str = "off"  # torch.compile mode for the step ("default", "reduce-overhead": + CUDA graphs on CUDA)
    threads: int = 1  # CPU intra-op threads during the render: CPU sums depend on it (see numerics.py)
    param: str = "lucid"  # "lucid": FFT image (fft, decorrelate, sd, decay_power); "maco": needs `magnitude=`
    transparency: bool = False  # also return the transparency map (alpha) for lucid; maco always returns it
    accentuation_weight: float = 0.0  # with `start_images=`: objective - w * mean squared distance to the start

    def __post_init__(self) -> None:
        for name in ("size", "steps", "images_per_unit", "threads"):
            if int(getattr(self, name)) < 1:
                raise LoupeError(f"render setting {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise LoupeError(f"render setting lr must be positive, got {self.lr}")
        if self.param not in PARAMS:
            raise LoupeError(f"render setting param must be one of {', '.join(PARAMS)}, got '{self.param}'")
        if not self.accentuation_weight >= 0:
            raise LoupeError(f"render setting accentuation_weight must be >= 0, got {self.accentuation_weight}")
        self.acceleration()  # validates precision and compile

    def to_dict(self) -> dict:
        return asdict(self)

    def acceleration(self) -> engine.Acceleration:
        """The speed options these settings ask the engine for."""
        return engine.Acceleration(self.precision, self.channels_last, compile=self.compile)


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
    alpha: np.ndarray | None = None  # float16 [n, H, W] in [0, 1]: transparency (maco, or settings.transparency)

    def __len__(self) -> int:
        return len(self.units)

    def pictures(self) -> np.ndarray:
        """What to store or show: uint8 RGB [n, H, W, 3], or RGBA [n, H, W, 4] with the transparency map
        (scaled to 0..255) as alpha when the render has one."""
        if self.alpha is None:
            return self.images
        alpha = np.clip(np.round(self.alpha.astype(np.float32) * 255), 0, 255).astype(np.uint8)
        return np.concatenate([self.images, alpha[..., None]], axis=-1)


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


def _checked_magnitude(settings: RenderSettings, magnitude) -> torch.Tensor | None:
    """MACO's magnitude as float32 `[3, size, size // 2 + 1]`, or a LoupeError naming the setting at fault."""
    if settings.param != "maco":
        if magnitude is not None:
            raise LoupeError(f"a magnitude spectrum is only used by render setting param='maco' "
                             f"(param is '{settings.param}')")
        return None
    expected = [3, settings.size, settings.size // 2 + 1]
    if magnitude is None:
        raise LoupeError(f"render setting param='maco' needs render_units(..., magnitude=) of shape {expected} "
                         f"(MagnitudeSpectrum({settings.size}, {settings.size}).result() of the dataset)")
    tensor = torch.as_tensor(magnitude).detach().cpu().float()
    if list(tensor.shape) != expected:
        raise LoupeError(f"maco magnitude has shape {list(tensor.shape)} but render setting size={settings.size} "
                         f"needs {expected}")
    if not torch.isfinite(tensor).all() or (tensor < 0).any():
        raise LoupeError("maco magnitude must be finite and non-negative")
    return tensor


def _checked_starts(settings: RenderSettings, start_images, n_units: int, per_unit: int) -> torch.Tensor | None:
    """Each row's start picture, float `[n_units * per_unit, 3, size, size]` in [0, 1], or a LoupeError."""
    if start_images is None:
        if settings.accentuation_weight > 0:
            raise LoupeError(f"render setting accentuation_weight={settings.accentuation_weight} needs "
                             f"render_units(..., start_images=) to stay close to")
        return None
    images = np.asarray(start_images)
    expected = f"uint8 [{n_units} or 1, {settings.size}, {settings.size}, 3]"
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (settings.size, settings.size, 3) \
            or len(images) not in (1, n_units):
        raise LoupeError(f"start_images must be {expected} (one per unit, or one for all, at render setting "
                         f"size), got {images.dtype} {list(images.shape)}")
    pictures = torch.tensor(images).permute(0, 3, 1, 2).float() / 255
    return pictures.expand(n_units, -1, -1, -1).repeat_interleave(per_unit, dim=0)


@dataclass(frozen=True)
class _BatchInputs:
    """What a batch needs besides its rows: MACO's magnitude and each row's start picture."""

    magnitude: torch.Tensor | None = None  # [3, size, size // 2 + 1]
    starts: torch.Tensor | None = None  # float [rows, 3, size, size] in [0, 1]


def _batch_inputs(batches: list[list[Row]], magnitude: torch.Tensor | None,
                  starts: torch.Tensor | None) -> list[_BatchInputs]:
    """Each batch's inputs; rows run on from one batch to the next, as do the rows of `starts`."""
    ends = np.cumsum([len(rows) for rows in batches]).tolist()
    return [_BatchInputs(magnitude, None if starts is None else starts[end - len(rows) : end])
            for rows, end in zip(batches, ends)]


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
    magnitude: np.ndarray | torch.Tensor | None = None,
    start_images: np.ndarray | None = None,
) -> UnitRenders:
    """Render `units` of `layer` (kind: channel, neuron, negative or diversity), `images_per_step` images at a time.

    Returns uint8 images and each image's final activation (the unit's spatial mean, or its centre
    value for neurons, measured on the final quantized image without transforms; for negative
    the raw mean, which the render drove down). `transforms` overrides the standard list (then
    `settings.standard_transforms` is ignored). Runs under `fixed_numerics(settings.threads)`.
    With a `basis`, units index its directions (SAE latents, any directions) instead of channels.
    `magnitude` (`[3, size, size // 2 + 1]`) is MACO's fixed spectrum, required by `settings.param="maco"`.
    `start_images` (uint8 `[len(units) or 1, size, size, 3]`) replace the random start: the
    parameterization is set to show them, and `settings.accentuation_weight` keeps renders near them.
    """
    lm = as_loaded_model(model)
    settings = settings or RenderSettings()
    unit_list = _checked_units(lm, layer, units, kind, settings, images_per_step, basis)
    per_unit = settings.images_per_unit if kind == "diversity" else 1
    fixed_magnitude = _checked_magnitude(settings, magnitude)
    starts = _checked_starts(settings, start_images, len(unit_list), per_unit)
    transform = make_transform(transforms if transforms is not None else (None if settings.standard_transforms else []))
    acceleration = settings.acceleration()
    batches = _batches(unit_list, per_unit, images_per_step)
    inputs = _batch_inputs(batches, fixed_magnitude, starts)
    step_fn, close = make_progress(progress, settings.steps * len(batches), desc=f"{layer} {kind}")
    images, activations, alphas = [], [], []
    try:
        with fixed_numerics(settings.threads), engine.ForwardSession(lm, [layer], acceleration) as session:
            for rows, batch_inputs in zip(batches, inputs):
                batch_images, batch_acts, batch_alpha = _render_batch(lm, session, layer, rows, kind, settings, seed,
                                                                      transform, step_fn, basis, batch_inputs)
                images.append(batch_images)
                activations.append(batch_acts)
                alphas.append(batch_alpha)
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
        alpha=np.concatenate(alphas) if alphas[0] is not None else None,
    )


def _image_param(settings: RenderSettings, init_seeds: list[int], inputs: _BatchInputs,
                 device: torch.device) -> Parameterization:
    """The batch's parameterization, each element seeded by its own init seed, or set to its start picture."""
    if settings.param == "maco":
        image = maco(settings.size, inputs.magnitude, batch=len(init_seeds), seeds=init_seeds)
    else:
        image = image_param(settings.size, batch=len(init_seeds), fft=settings.fft, decorrelate=settings.decorrelate,
                            sd=settings.sd, decay_power=settings.decay_power, seeds=init_seeds)
    image = image.to(device)
    if inputs.starts is not None:
        image.match_image(inputs.starts.to(device))
    return image


def _with_accentuation(objective: Objective, settings: RenderSettings, inputs: _BatchInputs,
                       device: torch.device) -> Objective:
    """Feature accentuation: objective - w * (each image's mean squared distance to its start picture)."""
    if inputs.starts is None or settings.accentuation_weight == 0:
        return objective
    return objective - settings.accentuation_weight * objectives.each_distance(inputs.starts.to(device))


def _alpha(saliency: torch.Tensor) -> np.ndarray:
    """Accumulated |gradient| per image, divided by its own max: float16 [B, H, W] in [0, 1]."""
    peak = saliency.flatten(1).amax(1).clamp_min(torch.finfo(saliency.dtype).tiny)
    return (saliency / peak[:, None, None]).half().cpu().numpy()


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
    inputs: _BatchInputs = _BatchInputs(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    image_seeds = [unit_seed(seed, layer, u, kind, i) for u, i in rows]
    init_seeds = [stream_seed(s, "init") for s in image_seeds]
    draw_seeds = [stream_seed(s, "transforms") for s in image_seeds]
    image = _image_param(settings, init_seeds, inputs, lm.device)
    uniforms = engine.step_uniforms(generators(draw_seeds), settings.steps, transform.n_random, lm.device)
    optimizer = torch.optim.Adam(image.parameters(), lr=settings.lr)
    objective = _with_accentuation(batch_objective(layer, rows, kind, settings, basis), settings, inputs, lm.device)
    wants_alpha = settings.param == "maco" or settings.transparency
    saliency = torch.zeros(len(rows), settings.size, settings.size, device=lm.device) if wants_alpha else None
    (final,) = engine.optimize(
        session, objective, image, optimizer, transform, uniforms, [settings.steps],
        redirect_steps=REDIRECT_STEPS if settings.redirected_relu else 0, progress=step_fn, saliency=saliency,
    )
    quantized = (final * 255).round().to(torch.uint8)
    with torch.no_grad():
        as_float = quantized.float() / 255
        measure = unit_values(session(as_float, as_float), layer, rows, kind, basis)
    alpha = _alpha(saliency) if saliency is not None else None
    return quantized.permute(0, 2, 3, 1).cpu().numpy(), measure.float().cpu().numpy(), alpha


__all__ = [
    "KINDS", "PARAMS", "RenderSettings", "UnitRenders", "batch_objective", "render_units", "stream_seed", "unit_seed",
    "unit_values",
]
