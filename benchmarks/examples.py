"""Cost of unit-page pictures (example crops, heat maps, band samples, histograms) relative to the scan.

Runs the same scan build twice in this process, in-process executor, local atlas folder:

  baseline   scan + per-layer reduce, `scan.examples.enabled: false`
  examples   the same, with example pictures, band samples and histograms (the default)

Both use the same model (the bundled ImageNet MobileNetV2, frozen weights), layers, images,
input size, k and batch size; they differ only in the example work, so the time difference is
its cost (model loading and planning are in both). The example work scales with the number of
images the unit pages NAME (top/bottom-k and band samples of every unit, each image decoded once
per layer), not with the dataset: so the script also reports that number and projects the extra
time to a dataset of `--project-images` images (ImageNet: 1.28M), where the same pages name a
tiny fraction of the images. Target: at most 15% extra time.

    python benchmarks/examples.py                       # ~4 minutes on 2 CPU cores (2,000 images, 96 px)
    python benchmarks/examples.py --images 10000 --size 128
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_images(folder: Path, count: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    from loupe.jobs.cli.sample_images import make_image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(make_image(index, size, rng)).save(folder / f"img{index:06d}.jpg", quality=90)


def config(atlas: Path, images: Path, args, examples: bool) -> dict:
    return {
        "atlas": {"url": str(atlas)},
        "models": [{"id": "mobilenet_v2", "source": "torchvision:mobilenet_v2",
                    "weights": "bundled:mobilenet_v2_imagenet", "layers": args.layers.split(","),
                    "preprocessing": {"range": [-1, 1], "input_size": args.size}}],
        "render": {"channel": {"enabled": False}},
        "scan": {"dataset": {"url": str(images)}, "k": args.k, "shards": args.shards,
                 "images_per_batch": args.batch, "decode_workers": args.workers,
                 "examples": {"enabled": examples, "samples_per_band": args.samples_per_band}},
    }


def timed_build(raw: dict, threads: int | None) -> float:
    from loupe.jobs.build import run_build
    from loupe.jobs.build.config import parse_config

    started = time.perf_counter()
    summary = run_build(parse_config(raw), executor="local", progress=False, log=lambda _: None, threads=threads)
    assert summary.published, summary.failed
    return time.perf_counter() - started


def named_images(atlas: Path, layers: list[str]) -> dict[str, int]:
    """How many distinct images each layer's unit pages name (each is decoded once for its pictures)."""
    from loupe.storage import open_atlas

    opened = open_atlas(str(atlas))
    counts = {}
    for layer in layers:
        examples = opened.examples("mobilenet_v2", layer).column("image_index").to_pylist()
        samples = opened.samples("mobilenet_v2", layer).column("image_index").to_pylist()
        counts[layer] = len(set(examples) | set(samples))
    return counts


def layer_channels(atlas: Path, layers: list[str]) -> list[int]:
    from loupe.storage import open_atlas

    opened = open_atlas(str(atlas))
    return [opened.activations("mobilenet_v2", layer, "max").shape[1] for layer in layers]


def band_pass_seconds(atlas: Path, layers: list[str], args) -> float:
    """Time of the band-sample and histogram pass alone (pooled maxima already in memory: a lower bound)."""
    import numpy as np

    from loupe.pipeline.scan import BandSampler, ValueHistogram, band_thresholds
    from loupe.storage import open_atlas

    opened = open_atlas(str(atlas))
    seconds = 0.0
    for layer in layers:
        values = np.asarray(opened.activations("mobilenet_v2", layer, "max")[:], dtype=np.float64)
        started = time.perf_counter()
        low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
        edges = np.linspace(0, 1, 6)[None, :] * (high - low)[:, None] + low[:, None]
        sampler = BandSampler(band_thresholds(edges, low, high), args.samples_per_band, 0)
        histogram = ValueHistogram(low, high, 32)
        ranks = np.arange(len(values), dtype=np.int64)
        for start in range(0, len(values), 1024):
            chunk = values[start:start + 1024]
            sampler.add(chunk, ranks[start:start + 1024], ranks[start:start + 1024])
            histogram.add(chunk)
        sampler.result()
        seconds += time.perf_counter() - started
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=96, help="model input size (px)")
    parser.add_argument("--layers", default="features.7,features.14")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--samples-per-band", type=int, default=2)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--project-images", type=int, default=1_281_167)
    args = parser.parse_args()
    layers = args.layers.split(",")
    with tempfile.TemporaryDirectory(prefix="loupe-bench-examples-") as tmp:
        folder = Path(tmp)
        make_images(folder / "images", args.images, int(args.size * 1.25))
        make_images(folder / "half", args.images // 2, int(args.size * 1.25))
        timed_build(config(folder / "warmup", folder / "half", args, False), args.threads)  # page cache, imports
        half = timed_build(config(folder / "baseline-half", folder / "half", args, False), args.threads)
        baseline = timed_build(config(folder / "baseline", folder / "images", args, False), args.threads)
        with_examples = timed_build(config(folder / "examples", folder / "images", args, True), args.threads)
        named = named_images(folder / "examples", layers)
        channels = layer_channels(folder / "examples", layers)
        band_pass = band_pass_seconds(folder / "examples", layers, args)
    extra = with_examples - baseline
    per_scanned = max(baseline - half, 1e-9) / (args.images - args.images // 2)  # slope: fixed costs cancel
    fixed = max(baseline - per_scanned * args.images, 0.0)
    scan_part = baseline - fixed
    total_named = sum(named.values())
    print(f"images scanned: {args.images} at {args.size} px; layers {layers}; k={args.k}, "
          f"{args.samples_per_band} samples x 5 bands")
    print(f"baseline (scan + reduce):            {baseline:8.1f} s  (of which fixed costs, from a half-size run: {fixed:.1f} s)")
    print(f"with example pictures:               {with_examples:8.1f} s")
    print(f"extra time / baseline:               {extra / baseline:8.1%}   (/ the scan's per-image part: {extra / scan_part:.1%})")
    print(f"images named by the unit pages:      {total_named} over {len(layers)} layers "
          f"({', '.join(f'{k}: {v}' for k, v in named.items())}); {total_named / args.images:.0%} of the scan's decodes")
    per_named = max(extra - band_pass, 0.0) / max(total_named, 1)
    bound = sum(width * (2 * args.k + 5 * args.samples_per_band) for width in channels)
    projected = (band_pass / args.images + per_named * bound / args.project_images) / per_scanned
    print(f"cost per scanned image {per_scanned * 1e3:.1f} ms; per named image {per_named * 1e3:.1f} ms; "
          f"band-sample pass {band_pass:.2f} s (scales with the dataset, like the scan)")
    print(f"projected at {args.project_images:,} images: {projected:.2%} extra over the scan "
          f"(target <= 15%; at most {bound} named images, each at the measured cost)")

if __name__ == "__main__":
    main()
