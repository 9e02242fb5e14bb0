"""Dataset-scan speed and memory on ImageNet MobileNetV2 over ../shared/datasets/imagenet-sample.

In one process, on the same decoded batches (decoding excluded):
  (a) a plain forward pass of the whole model;
  (b) the full scan of every features.N layer: top-16, bottom-16, exact statistics, quantile
      sketch (one forward per batch, stopped after features.18). Target: (b) <= 1.10 x (a).
  (b+) the same with pooled activations (max and mean, float16) streamed to a sink, as builds do.
Then end to end, decoding included: images/s with 1 and 2 decoding workers. Then peak memory of
separate processes scanning 1000 and 4000 images (the sample repeated), which must stay flat.

    python benchmarks/scan.py                      # everything (slow on a 2-core CPU)
    python benchmarks/scan.py --images 256 --memory-images 500,2000 --repeats 2   # quicker look

Receptive fields are probed once per model (reported separately), like a Ray actor does once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loupe.pipeline.data import Listing, LoaderOptions, iter_batches, list_images  # noqa: E402
from loupe.pipeline.models import Preprocessing, load_model  # noqa: E402
from loupe.pipeline.scan import ScanOptions, Scanner, scan_dataset  # noqa: E402

SHARED = Path(os.environ.get("LOUPE_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "models" / "mobilenet_v2_imagenet_tflite.pth"
DATASET = SHARED / "datasets" / "imagenet-sample"
LAYERS = [f"features.{i}" for i in range(19)]


def load():
    preprocessing = Preprocessing.from_range(-1.0, 1.0, input_size=224, resize_size=256)  # x/127.5 - 1
    return load_model("torchvision:mobilenet_v2", str(WEIGHTS), preprocessing=preprocessing)


def repeated(listing: Listing, count: int) -> Listing:
    """`count` images cycling through `listing`, each repeat with its own ids (same files)."""
    ids, paths = listing.ids(), listing.table.column("path").to_pylist()
    chosen = [(f"repeat{i // len(ids)}/{ids[i % len(ids)]}", paths[i % len(ids)]) for i in range(count)]
    return Listing.build("folder", listing.root, [c[0] for c in chosen], {"path": [c[1] for c in chosen]})


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def speed(args) -> dict:
    model = load()
    listing = list_images(str(DATASET))
    if args.images < len(listing):
        listing = listing.slice(0, args.images)
    size, resize = model.preprocessing.input_size, model.preprocessing.resize_size
    print(f"{model.describe()}\n{len(listing)} images, batch {args.images_per_batch}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    started = time.perf_counter()
    batches = list(iter_batches(listing, size, resize, options=LoaderOptions(args.images_per_batch, workers=2)))
    print(f"decoded once in {time.perf_counter() - started:.1f}s")
    scanner = Scanner(model, LAYERS, ScanOptions(k=16, pooled=False))
    probe = timed(lambda: scanner.receptive_fields)
    print(f"receptive fields of {len(LAYERS)} layers probed in {probe:.1f}s (once per model)")
    pooled_scanner = Scanner(model, LAYERS, ScanOptions(k=16, pooled=True))

    def forward() -> None:
        with torch.inference_mode():
            for batch in batches:
                model(batch.images.to(model.device).float().div_(255.0))
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    def scan(which: Scanner, sink=None):
        def run() -> None:
            which.scan(batches, listing, on_chunk=sink, pad_to=args.images_per_batch)

        return run

    forward()  # warm-up: allocator, kernels, thread pools
    times: dict[str, list[float]] = {"a": [], "b": [], "b+": []}
    for _ in range(args.repeats):
        times["a"].append(timed(forward))
        times["b"].append(timed(scan(scanner)))
        times["b+"].append(timed(scan(pooled_scanner, sink=lambda chunk: None)))
    best = {key: min(values) for key, values in times.items()}
    for key, label in (("a", "(a) plain forward"), ("b", "(b) scan, 19 layers, top/bottom-16 + stats"),
                       ("b+", "(b+) scan + pooled activations")):
        print(f"{label:46s} best {best[key]:7.2f}s  median {statistics.median(times[key]):7.2f}s  "
              f"{len(listing) / best[key]:7.1f} images/s")
    print(f"ratio (b)/(a) = {best['b'] / best['a']:.3f}  (target <= 1.10)")
    print(f"ratio (b+)/(a) = {best['b+'] / best['a']:.3f}")

    for workers in (1, 2):
        duration = timed(lambda: scan_dataset(model, listing, pooled_scanner,
                                              loader=LoaderOptions(args.images_per_batch, workers=workers),
                                              on_chunk=lambda chunk: None))
        print(f"end to end with {workers} decoding worker(s): {len(listing) / duration:.1f} images/s "
              f"({duration:.1f}s, decoding + scan + pooled activations)")
    return best


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Restart the peak-memory counter (Linux >= 4.0), so the scan is measured on its own."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def memory(count: int, images_per_batch: int) -> dict:
    """Scan `count` images in this process; report peak resident memory of the scan itself."""
    model = load()
    listing = repeated(list_images(str(DATASET)), count)
    scanner = Scanner(model, LAYERS, ScanOptions(k=16, pooled=True))
    scanner.receptive_fields  # noqa: B018 - probed before the measured scan, like a warm actor
    before = peak_rss_mb()
    reset = reset_peak()
    size, resize = model.preprocessing.input_size, model.preprocessing.resize_size
    with torch.inference_mode():
        for batch in iter_batches(listing.slice(0, 2 * images_per_batch), size, resize, options=LoaderOptions(images_per_batch, 0)):
            model(batch.images.float().div_(255.0))
    forward_peak = peak_rss_mb()
    reset_peak()
    result = scan_dataset(model, listing, scanner, loader=LoaderOptions(images_per_batch, workers=2),
                          on_chunk=lambda chunk: None)
    return {
        "images": count,
        "scanned": result.scanned,
        "peak_rss_mb_before_scan": before,
        "peak_rss_mb_plain_forward": forward_peak,
        "peak_rss_mb": peak_rss_mb(),
        "peak_reset": reset,
        "peak_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="images for the speed runs (default: all 1000)")
    parser.add_argument("--images-per-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="alternating (a)/(b) rounds; best of each is compared")
    parser.add_argument("--memory-images", default="1000,4000", help="image counts for the memory runs ('' to skip)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 gives steadier ratios on a busy machine")
    parser.add_argument("--memory-run", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not WEIGHTS.is_file() or not DATASET.is_dir():
        print(f"skipped: offline data not found under {SHARED} (needs models/{WEIGHTS.name} and "
              "datasets/imagenet-sample; set LOUPE_SHARED to point at it)")
        return 0
    if args.memory_run is not None:
        print(json.dumps(memory(args.memory_run, args.images_per_batch)))
        return 0

    speed(args)
    counts = [int(c) for c in args.memory_images.split(",") if c.strip()]
    reports = []
    for count in counts:
        child = subprocess.run(
            [sys.executable, __file__, "--memory-run", str(count), "--images-per-batch", str(args.images_per_batch),
             *(["--threads", str(args.threads)] if args.threads else [])],
            capture_output=True, text=True, check=True,
        )
        reports.append(json.loads(child.stdout.strip().splitlines()[-1]))
        r = reports[-1]
        during = "during the scan" if r["peak_reset"] else "including setup"
        print(f"memory, {r['images']} images ({r['scanned']} scanned): peak {r['peak_rss_mb']:.0f} MB {during} "
              f"(plain forward of a batch: {r['peak_rss_mb_plain_forward']:.0f} MB; model load + receptive-field "
              f"probe: {r['peak_rss_mb_before_scan']:.0f} MB), "
              f"decoding workers peak {r['peak_worker_rss_mb']:.0f} MB")
    if len(reports) >= 2:
        growth = reports[-1]["peak_rss_mb"] / reports[0]["peak_rss_mb"]
        print(f"peak memory {reports[-1]['images']} vs {reports[0]['images']} images: x{growth:.3f} (flat means ~1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
