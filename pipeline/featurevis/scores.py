"""How trustworthy a render is, measured with the scan's own statistic.

For unit u of a layer and its render R (uint8 [H, W, 3], fed at its own size):

    a(x)           = max over positions p of act(x)[u, p]: the spatial max of the unit's channel
                     at the layer as the module returns it (tokens for NLC layers), with x given
                     to the model as a scan feeds dataset images: uint8 -> /255 -> the model's
                     normalization inside `capture`
                     (for a unit of a basis: the spatial max of its encoded value, as scans measure)
    fv_activation  = a(R)
    fv_robustness  = (1/n) * sum_{k<n} a(T_k(R)) / a(R), T_k independent draws of the standard
                     transform stack (pad, jitter, scale, rotate, jitter: what render_units
                     optimizes under); NaN where a(R) <= 0 or a(R) is not finite

A render whose activation collapses under a few pixels of jitter exploits an exact alignment,
not a feature; near 1 means the unit responds to what the picture shows. Unit u's draws come
from its own generator, seeded by (seed, layer, u), so a unit's scores never depend on which
units share its batch (up to floating-point summation order in batched convolutions). The build
divides fv_activation by the unit's natural max over the dataset. A model that accepts one input
size only (a vision transformer) gets the transformed pictures resized to it, as renders do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.featurevis.batch_units import stream_seed, unit_seed
from loupe.pipeline.featurevis.engine import fit_input, fixed_input_size, step_uniforms
from loupe.pipeline.featurevis.numerics import fixed_numerics
from loupe.pipeline.featurevis.param import generators
from loupe.pipeline.featurevis.transforms import Compose, standard_transforms
from loupe.pipeline.models import LoadedModel, capture
from loupe.pipeline.models.catalog import check_unit
from loupe.pipeline.scan.layout import as_channels_first

SCORE_KIND = "score"  # the kind in each unit's seed: score draws are independent of its render's draws

if TYPE_CHECKING:
    from loupe.pipeline.models.basis import Basis


@dataclass(frozen=True)
class RenderScores:
    """Per-unit scores in the request's unit order (see the module docstring for the formulas)."""

    activation: np.ndarray  # float32 [n]: fv_activation
    robustness: np.ndarray  # float32 [n]: fv_robustness, NaN where the activation is <= 0 or not finite


def score_renders(model: LoadedModel, layer: str, units: Sequence[int], images: np.ndarray, *,
                  transforms: int = 8, seed: int = 0, images_per_step: int | None = None,
                  threads: int = 1, basis: "Basis | None" = None) -> RenderScores:
    """fv_activation and fv_robustness of one render per unit (`images` uint8 [n, H, W, 3], in `units` order).

    One forward per chunk of `images_per_step` renders (default: all) untransformed, then one per
    transform draw; only `layer` is captured. Runs under `fixed_numerics(threads)` like renders.
    """
    info = model.catalog[layer]  # LayerError names an unknown layer
    units = [int(u) for u in units]
    if basis is not None:  # a basis unit's statistic is its encoded value's spatial max, as in scans
        basis.check_layer(info.channels)
        bad = [u for u in units if not 0 <= u < basis.units]
        if bad:
            raise LoupeError(f"scores for layer {layer}: unit {bad[0]} is outside basis {basis.source} "
                             f"({basis.units} units)")
    else:
        for unit in units:
            check_unit(info, unit)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(units):
        raise LoupeError(f"scores for layer {layer}: renders must be uint8 [units, H, W, 3] with one per unit "
                         f"({len(units)} units), got {images.dtype} {list(images.shape)}")
    if transforms < 0:
        raise LoupeError(f"scores for layer {layer}: transforms must be >= 0, got {transforms}")
    if images_per_step is not None and images_per_step < 1:
        raise LoupeError(f"scores for layer {layer}: images_per_step must be >= 1, got {images_per_step}")
    if not units:
        empty = np.zeros(0, np.float32)
        return RenderScores(empty, empty.copy())
    step = images_per_step or len(units)
    stack = Compose(standard_transforms)
    seeds = [stream_seed(unit_seed(seed, layer, unit, SCORE_KIND), "transforms") for unit in units]
    draws = step_uniforms(generators(seeds), transforms, stack.n_random, torch.device("cpu")) \
        if transforms else None  # [transforms, n, n_random]
    activation = np.zeros(len(units), np.float32)
    transformed = np.zeros((transforms, len(units)), np.float32)
    input_size = fixed_input_size(model.module)  # a ViT sees every picture, transformed or not, at its size
    with fixed_numerics(threads), capture(model, [layer]) as cap, torch.inference_mode():
        for start in range(0, len(units), step):
            stop = min(start + step, len(units))
            pixels = torch.from_numpy(images[start:stop]).to(model.device).permute(0, 3, 1, 2).float().div_(255.0)
            picked = torch.tensor(units[start:stop], device=model.device)

            def unit_max(x: torch.Tensor) -> np.ndarray:
                maps = as_channels_first(cap.run(fit_input(x, input_size))[layer], info.layout)
                if basis is not None:  # each render's own latent only, encoded as the scan does
                    values = basis.encode_units(maps.flatten(2).transpose(1, 2), picked.to(maps.device))
                else:
                    values = maps[torch.arange(len(x), device=maps.device), picked.to(maps.device)].flatten(1)
                return values.amax(1).float().cpu().numpy()

            activation[start:stop] = unit_max(pixels)
            for k in range(transforms):
                assert draws is not None
                transformed[k, start:stop] = unit_max(stack(pixels, draws[k, start:stop]))
    usable = np.isfinite(activation) & (activation > 0)
    robustness = np.full(len(units), np.nan, np.float32)
    if transforms:
        robustness[usable] = transformed[:, usable].mean(axis=0) / activation[usable]
    return RenderScores(activation, robustness)


__all__ = ["RenderScores", "score_renders"]
