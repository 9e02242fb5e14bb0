"""Feature visualization with Lucid's toolkit and names, for any PyTorch model, batched for clusters.

    from loupe.pipeline.featurevis import objectives, param, transforms, render_vis, render_units
    images = render_vis(lm, "inception4a:97")                  # one float [B, H, W, 3] array per threshold
    renders = render_units(lm, "features.10", range(64))       # uint8 images + final activations
    spectrum = MagnitudeSpectrum(128, 128); spectrum.add(dataset_images)   # MACO's natural magnitude
    renders = render_units(lm, "features.10", range(64), settings=RenderSettings(param="maco"),
                           magnitude=spectrum.result())                     # + renders.alpha (transparency)
"""

from loupe.pipeline.featurevis import objectives, param, transforms
from loupe.pipeline.featurevis.batch_units import KINDS, PARAMS, RenderSettings, UnitRenders, render_units, unit_seed
from loupe.pipeline.featurevis.numerics import fixed_numerics
from loupe.pipeline.featurevis.redirected_relu import RedirectedReLUMode
from loupe.pipeline.featurevis.render import render_vis
from loupe.pipeline.featurevis.scores import RenderScores, score_renders
from loupe.pipeline.featurevis.spectrum import MagnitudeSpectrum, spectrum_slope

transform = transforms  # Lucid's module name (lucid.optvis.transform)

__all__ = [
    "KINDS",
    "MagnitudeSpectrum",
    "PARAMS",
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
    "spectrum_slope",
    "transform",
    "transforms",
    "unit_seed",
]
