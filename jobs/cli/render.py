"""`loupe render`: one unit's feature visualization as a PNG, for a quick look.

It renders through the same `render_units` as a cluster build, so the same model, unit, kind,
settings and seed give the same picture as the atlas.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from loupe.jobs.cli.models import add_model_arguments
from loupe.pipeline.errors import LoupeError
from loupe.pipeline.featurevis.batch_units import KINDS, RenderSettings, render_units
from loupe.pipeline.featurevis.objectives import parse_unit
from loupe.pipeline.models import Preprocessing, load_model
from loupe.pipeline.models.sources import parse_source, torchvision_weight_names


def add_render_command(subparsers) -> None:
    """Register `loupe render SOURCE LAYER:UNIT`."""
    parser = subparsers.add_parser(
        "render",
        help="render one unit's feature visualization to a PNG",
        description="Optimize an image that excites one unit (Lucid's defaults) and save it as a PNG.",
    )
    add_model_arguments(parser, weights_default=None)
    parser.add_argument("unit", metavar="LAYER:UNIT", help="the unit to render, e.g. inception4a:97 (`loupe layers` lists layers)")
    parser.add_argument("--kind", default="channel", choices=KINDS, help="what to maximize (default: channel)")
    parser.add_argument("--steps", type=int, default=512, help="optimization steps (default 512)")
    parser.add_argument("--size", type=int, default=128, help="image size in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same image")
    parser.add_argument("--images-per-unit", type=int, default=4, help="images per unit for --kind diversity (default 4)")
    parser.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                        help="input normalization mean, overriding what the weights declare")
    parser.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                        help="input normalization std, overriding what the weights declare")
    parser.add_argument("--out", default=None, help="PNG to write (default: <layer>_<unit>.png)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    parser.set_defaults(func=run_render)


def default_weights(source: str) -> str:
    """Pretrained torchvision weights when the builder has any, random init otherwise."""
    parsed = parse_source(source)
    if parsed.is_torchvision and torchvision_weight_names(parsed.target):
        return "DEFAULT"
    return "none"


def run_render(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.size < 1:
        raise LoupeError(f"--steps and --size must be >= 1 (got steps={args.steps}, size={args.size})")
    if (args.mean is None) != (args.std is None):
        raise LoupeError("give --mean and --std together")
    layer, unit = parse_unit(args.unit)
    out = Path(args.out) if args.out else Path(f"{layer}_{unit}.png".replace("/", "_"))
    if out.suffix.lower() != ".png":
        raise LoupeError(f"--out must name a .png file, got '{out}'")
    if not out.parent.is_dir():
        raise LoupeError(f"--out directory '{out.parent}' does not exist")
    weights = args.weights if args.weights is not None else default_weights(args.source)
    preprocessing = None
    if args.mean is not None:
        preprocessing = Preprocessing(mean=tuple(args.mean), std=tuple(args.std))
    model = load_model(
        args.source, weights, preprocessing=preprocessing, device=args.device,
        state_dict_key=args.state_dict_key, strip_prefix=args.strip_prefix,
    )
    model.unit(f"{layer}:{unit}")  # unknown layer or unit: a clear error before any work
    settings = RenderSettings(size=args.size, steps=args.steps, images_per_unit=args.images_per_unit)
    print(f"rendering {layer}:{unit} ({args.kind}) of {model.describe()}")
    renders = render_units(model, layer, [unit], args.kind, settings, seed=args.seed, progress=args.progress)
    _save_png(np.concatenate(list(renders.images), axis=1), out)
    activations = ", ".join(f"{a:.4g}" for a in renders.activations)
    print(f"wrote {out} ({renders.images.shape[2]}x{renders.images.shape[1]} px per image); final activation: {activations}")
    return 0


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")


__all__ = ["add_render_command", "run_render"]
