"""How trustworthy a render is, measured with the scan's own statistic.

    fv_activation  = a(render): the spatial max of the unit's channel at the layer, for the
                     render fed untransformed at its own size (uint8 -> [0, 1] -> the model's
                     normalization, exactly as a scan feeds dataset images)
    fv_robustness  = mean over `transforms` seeded draws T of the standard transform stack (the
                     jitter, scale and rotation the render was optimized under) of a(T(render)) / a(render);
                     NaN where a(render) <= 0 or is not finite

A render whose activation collapses under a few pixels of jitter exploits an exact alignment,
not a feature; near 1 means the unit responds to what the picture shows. The build divides
fv_activation by the unit's natural max over the dataset (fv_natural_ratio).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from loupe.pipeline.errors import LoupeError
from loupe.pipeline.featurevis.numerics import fixed_numerics
from loupe.pipeline.featurevis.transforms import Compose, standard_transforms
from loupe.pipeline.models import capture
from loupe.pipeline.scan.layout import as_channels_first

if TYPE_CHECKING:
    from loupe.pipeline.models import LoadedModel


@dataclass(frozen=True)
class RenderScores:
    activation: np.ndarray  # float32 [n]
    robustness: np.ndarray  # float32 [n]


def score_renders(model: "LoadedModel", layer: str, units: Sequence[int], images: np.ndarray, *,
                  transforms: int = 8, seed: int = 0, images_per_step: int | None = None,
                  threads: int = 1) -> RenderScores:
    """fv_activation and fv_robustness of one render per unit (uint8 [n, H, W, 3], in `units` order)."""
    info = model.catalog[layer]  # LayerError names an unknown layer
    units = np.asarray(list(units), dtype=np.int64)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(units):
        raise LoupeError(f"scores for {layer}: renders must be uint8 [units, H, W, 3] with one per unit "
                         f"({len(units)} units), got {images.dtype} {list(images.shape)}")
    bad = units[(units < 0) | (units >= info.channels)]
    if len(bad):
        raise LoupeError(f"scores for {layer}: unit {int(bad[0])} is outside the layer's {info.channels} units")
    if transforms < 0:
        raise LoupeError(f"scores: transforms must be >= 0, got {transforms}")
    step = images_per_step or len(units) or 1
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    stack = Compose(standard_transforms)
    generator = torch.Generator().manual_seed(int(seed))
    draws = [torch.rand(len(units), stack.n_random, generator=generator) for _ in range(transforms)]
    with fixed_numerics(threads), capture(model, [layer]) as cap, torch.inference_mode():
        def unit_max(x: torch.Tensor) -> np.ndarray:
            out = []
            for start in range(0, len(x), step):
                chunk = x[start:start + step].to(model.device)
                values = as_channels_first(cap.run(chunk)[layer], info.layout).flatten(2).amax(2)
                picked = values[torch.arange(len(chunk)), torch.from_numpy(units[start:start + step]).to(values.device)]
                out.append(picked.float().cpu().numpy())
            return np.concatenate(out) if out else np.zeros(0, np.float32)

        activation = unit_max(pixels)
        ratios = [unit_max(stack(pixels, u)) for u in draws]
    with np.errstate(invalid="ignore", divide="ignore"):
        usable = np.isfinite(activation) & (activation > 0)
        robustness = (np.mean(ratios, axis=0) / np.where(usable, activation, 1.0)) if ratios else \
            np.full(len(units), np.nan)
    robustness = np.where(usable, robustness, np.nan).astype(np.float32)
    return RenderScores(activation.astype(np.float32), robustness)


__all__ = ["RenderScores", "score_renders"]
