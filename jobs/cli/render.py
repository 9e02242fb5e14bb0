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
from loupe.pipeline.featurevis.batch_units import KINDS, PARAMS, RenderSettings, render_units
from loupe.pipeline.featurevis.engine import COMPILE_MODES, PRECISIONS
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
    parser.add_argument("--param", default="lucid", choices=PARAMS,
                        help="lucid: Lucid's Fourier image (default); maco: phase only, over the magnitude spectrum of "
                             "--spectrum-from's images (RGBA PNG: alpha is the transparency map)")
    parser.add_argument("--spectrum-from", default=None, metavar="URL",
                        help="images (a folder, prefix or Parquet tables) whose mean spectrum MACO keeps")
    parser.add_argument("--spectrum-images", type=int, default=256, help="images averaged into the spectrum (256)")
    parser.add_argument("--transparency", action="store_true", help="lucid: also write the transparency map as alpha")
    parser.add_argument("--start-image", default=None, metavar="PATH",
                        help="feature accentuation: start from this picture instead of noise")
    parser.add_argument("--accentuation-weight", type=float, default=0.0,
                        help="with --start-image: how strongly the render stays close to it (e.g. 10 to 1000)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="bf16: autocast the model to bfloat16 (faster on GPUs; pictures within a few grey levels)")
    parser.add_argument("--compile", default="off", choices=COMPILE_MODES,
                        help="torch.compile the model's step with this mode (reduce-overhead, max-autotune: also CUDA graphs on a GPU); "
                             "the first step pays the compile time")
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
    settings = RenderSettings(size=args.size, steps=args.steps, images_per_unit=args.images_per_unit,
                              param=args.param, transparency=args.transparency,
                              accentuation_weight=args.accentuation_weight, precision=args.precision,
                              compile=args.compile)
    start = _start_image(args.start_image, args.size) if args.start_image else None
    magnitude = _spectrum(args.spectrum_from, args.spectrum_images, args.size, model) if args.param == "maco" else None
    print(f"rendering {layer}:{unit} ({args.kind}, {args.param}) of {model.describe()}")
    renders = render_units(model, layer, [unit], args.kind, settings, seed=args.seed, progress=args.progress,
                           magnitude=magnitude, start_images=start)
    _save_png(np.concatenate(list(renders.pictures()), axis=1), out)
    activations = ", ".join(f"{a:.4g}" for a in renders.activations)
    print(f"wrote {out} ({renders.images.shape[2]}x{renders.images.shape[1]} px per image); final activation: {activations}")
    return 0


def _start_image(path: str, size: int) -> np.ndarray:
    """The accentuation start picture as uint8 [1, size, size, 3] (resized, not cropped)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))[None]
    except (OSError, UnidentifiedImageError) as exc:
        raise LoupeError(f"--start-image {path} cannot be read as a picture: {exc}") from None


def _spectrum(url: str | None, count: int, size: int, model) -> np.ndarray:
    """MACO's magnitude: the mean spectrum of the first `count` images at `url`, decoded as the model's input."""
    from loupe.pipeline.data import list_images
    from loupe.pipeline.data.loader import read_images
    from loupe.pipeline.featurevis import MagnitudeSpectrum

    if not url:
        raise LoupeError("--param maco needs --spectrum-from: the images whose magnitude spectrum MACO keeps")
    if count < 1:
        raise LoupeError(f"--spectrum-images must be >= 1, got {count}")
    listing = list_images(url)
    rows = np.arange(min(count, len(listing)))
    decoded = read_images(listing, rows, model.preprocessing.input_size, model.preprocessing.resize_size)
    if not len(decoded.positions):
        raise LoupeError(f"--spectrum-from {url}: none of the first {len(rows)} images could be decoded")
    spectrum = MagnitudeSpectrum(size, size)
    spectrum.add(decoded.images)
    return spectrum.result()


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")


__all__ = ["add_render_command", "run_render"]
