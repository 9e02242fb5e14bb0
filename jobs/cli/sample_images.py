"""`loupe sample-images DIR`: a small, seeded, offline image folder for the quickstart scan.

The pictures are procedural (oriented gratings, colour fields, checkerboards, discs, smooth
noise), so a fresh machine without any dataset can still run a complete build. Point a config at
real photos for real atlases.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

PATTERNS = ("grating", "colour", "checker", "disc", "noise")


def make_image(index: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB uint8 picture; the pattern cycles with `index`, its parameters come from `rng`."""
    pattern = PATTERNS[index % len(PATTERNS)]
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    colour_a, colour_b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    if pattern == "grating":
        angle, freq = rng.uniform(0, np.pi), rng.uniform(2, 12)
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + rng.uniform(0, 6.3))
    elif pattern == "colour":
        mix = np.clip(x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1) + 0.5, 0, 1)
    elif pattern == "checker":
        cells = int(rng.integers(2, 10))
        mix = ((np.floor(x * cells) + np.floor(y * cells)) % 2).astype(np.float32)
    elif pattern == "disc":
        cy, cx, radius = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.1, 0.4)
        mix = (((y - cy) ** 2 + (x - cx) ** 2) < radius**2).astype(np.float32)
    else:
        coarse = rng.uniform(0, 1, (8, 8)).astype(np.float32)
        mix = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC)).clip(0, 1)
    image = mix[..., None] * colour_a + (1 - mix[..., None]) * colour_b
    return (image.clip(0, 1) * 255).astype(np.uint8)


def write_sample_images(folder: str | Path, count: int = 96, size: int = 160, seed: int = 0) -> list[Path]:
    """Write `count` JPEGs into `folder` (idempotent: same seed, same files)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"{index:04d}_{PATTERNS[index % len(PATTERNS)]}.jpg"
        Image.fromarray(make_image(index, size, rng)).save(path, quality=92)
        paths.append(path)
    return paths


def add_sample_images_command(subparsers) -> None:
    parser = subparsers.add_parser("sample-images", help="write a small procedural image folder (offline quickstart data)")
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=96)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    paths = write_sample_images(args.folder, args.count, args.size, args.seed)
    print(f"wrote {len(paths)} images to {args.folder}")
    return 0
