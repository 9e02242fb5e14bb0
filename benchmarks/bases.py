"""What scanning a layer in an SAE basis costs, next to scanning its channels alone.

One process, the same decoded batches (decoding excluded), the bundled ImageNet MobileNetV2 (its
float16 weights, loaded into float32) and `features.7` (64 channels, 28 x 28 positions):
  (a) the scan of the layer's channels: top/bottom-k, exact statistics, quantile sketch;
  (b) the same pass with an SAE basis beside the channels (one forward, both reduced), for SAEs
      of several widths with ReLU and with TopK; the SAEs are random (cost does not depend on the
      weights) and their latents are encoded a chunk at a time (`Basis.units_per_chunk`).
The ratio (b)/(a) is the price of the basis; the peak of one chunk of latent values is bounded
(`basis.CHUNK_VALUES` floats) whatever the width.

    python benchmarks/bases.py                         # 256 images, widths 1024 and 4096
    python benchmarks/bases.py --images 64 --widths 512   # quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loupe.pipeline.data import Listing  # noqa: E402
from loupe.pipeline.data.loader import Batch  # noqa: E402
from loupe.pipeline.models import load_model  # noqa: E402
from loupe.pipeline.models.basis import Basis  # noqa: E402
from loupe.pipeline.scan import ScanOptions, Scanner  # noqa: E402

LAYER = "features.7"


def batches(count: int, size: int, per_batch: int) -> tuple[Listing, list[Batch]]:
    """Synthetic decoded images (smooth random fields, not noise) in batches, with their listing."""
    rng = np.random.default_rng(0)
    ids = [f"img{i:06d}" for i in range(count)]
    listing = Listing.build("folder", "synthetic", ids, {"path": ids})
    out = []
    for start in range(0, count, per_batch):
        stop = min(start + per_batch, count)
        coarse = rng.integers(0, 256, (stop - start, 3, size // 8, size // 8)).astype(np.float32)
        images = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(size, size), mode="bilinear")
        out.append(Batch(start=start, stop=stop, images=images.clamp(0, 255).to(torch.uint8),
                         positions=np.arange(start, stop, dtype=np.int64), keys=listing.keys[start:stop].copy(),
                         skipped=[]))
    return listing, out


def sae(width: int, channels: int, activation: str) -> Basis:
    generator = torch.Generator().manual_seed(width)
    return Basis(LAYER, torch.randn(width, channels, generator=generator),
                 encoder=torch.randn(width, channels, generator=generator) / channels ** 0.5,
                 encoder_bias=torch.zeros(width), decoder_bias=torch.zeros(channels), activation=activation,
                 k=32 if activation == "topk" else None, source=f"random {width}-latent {activation} SAE")


def timed_scan(model, listing: Listing, data: list[Batch], bases: dict, repeats: int) -> float:
    scanner = Scanner(model, [LAYER], ScanOptions(k=16, pooled=False), bases=bases)
    scanner.receptive_fields  # probed once per model, as a worker does
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        scanner.scan(iter(data), listing, pad_to=len(data[0].positions))
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--images-per-batch", type=int, default=32)
    parser.add_argument("--widths", default="1024,4096")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = load_model("torchvision:mobilenet_v2", "bundled:mobilenet_v2_imagenet", device="cpu")
    channels = model.layer(LAYER).channels
    listing, data = batches(args.images, model.preprocessing.input_size, args.images_per_batch)
    print(f"{model.describe()}\n{LAYER}: {channels} channels; {args.images} images in batches of "
          f"{args.images_per_batch}; {torch.get_num_threads()} threads; best of {args.repeats}")
    base = timed_scan(model, listing, data, {}, args.repeats)
    print(f"(a) channels only: {args.images / base:8.1f} images/s")
    for width in (int(w) for w in args.widths.split(",")):
        for activation in ("relu", "topk"):
            seconds = timed_scan(model, listing, data, {f"{LAYER}@sae": sae(width, channels, activation)},
                                 args.repeats)
            print(f"(b) + SAE {width:5d} latents, {activation:4s}: {args.images / seconds:8.1f} images/s, "
                  f"x{seconds / base:.2f} the channels-only scan")


if __name__ == "__main__":
    main()
