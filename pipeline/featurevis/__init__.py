"""Feature visualization with Lucid's toolkit and names, for any PyTorch model, batched for clusters.

    from loupe.pipeline.featurevis import objectives, param, transforms, render_vis, render_units
    images = render_vis(lm, "inception4a:97")                  # one float [B, H, W, 3] array per threshold
    renders = render_units(lm, "features.10", range(64))       # uint8 images + final activations
"""

from loupe.pipeline.featurevis import objectives, param, transforms
from loupe.pipeline.featurevis.batch_units import KINDS, RenderSettings, UnitRenders, render_units, unit_seed
from loupe.pipeline.featurevis.numerics import fixed_numerics
from loupe.pipeline.featurevis.redirected_relu import RedirectedReLUMode
from loupe.pipeline.featurevis.render import render_vis
from loupe.pipeline.featurevis.scores import RenderScores, score_renders

transform = transforms  # Lucid's module name (lucid.optvis.transform)

__all__ = [
    "KINDS",
    "RedirectedReLUMode",
    "RenderScores",
    "RenderSettings",
    "UnitRenders",
    "fixed_numerics",
    "objectives",
    "param",
    "render_units",
    "render_vis",
    "score_renders",
    "transform",
    "transforms",
    "unit_seed",
]
