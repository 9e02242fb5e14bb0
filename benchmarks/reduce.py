"""Scan reduce memory and time for 16, 64 and 256 shards of the same scan (target: flat in shards).

Synthesizes a scan's partials as the scan produces them (`UnitAccumulator` over random
activations: top/bottom-k, exact sums, quantile sketch) for `--layers` layers of `--channels`
channels, `--shard-images` images per shard at 256 shards; the 64- and 16-shard partials are
exact merges of 4 and 16 neighbouring 256-shard results, so every shard count is the same scan.
They are saved in a local atlas folder through the real item writer (one checksummed npz per
layer and shard, as scan items write them). Each measurement runs in its own process:

  per-layer   the build's reduce item: `scan_stage.reduce_layer` of one layer (streamed, shard by shard)
  per-model   the previous reduce: one item for the model, each shard's every layer loaded per step
  all-at-once every shard's partial loaded first, then merged (what the issue describes)

and reports the Python/numpy heap peak (tracemalloc) and the process's peak RSS above what it
held after imports, and the wall time, each as a ratio to the same mode's 16-shard run.

    python benchmarks/reduce.py                    # about a minute and a half on 2 CPU cores
    python benchmarks/reduce.py --modes per-layer,per-model,all-at-once --channels 128   # all three
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARD_COUNTS = (16, 64, 256)
MODES = ("per-layer", "per-model", "all-at-once")


def synthesize(folder: Path, layers: int, channels: int, k: int, shard_images: int) -> dict:
    """Write the partials of 256, 64 and 16 shards of one scan; return each count's item keys."""
    import numpy as np
    import torch

    from loupe.jobs.build.scan_stage import partial_name
    from loupe.pipeline.data.listing import Listing
    from loupe.pipeline.scan import ScanResult, merge_results
    from loupe.pipeline.scan.accumulate import UnitAccumulator, reduce_activation
    from loupe.pipeline.scan.result import Examples, LayerResult
    from loupe.storage import AtlasWriter
    from loupe.storage.build_state import write_partial_arrays

    names = [f"layer{i}" for i in range(layers)]
    total = max(SHARD_COUNTS) * shard_images
    ids = [f"img{i:07d}.jpg" for i in range(total)]
    listing = Listing.build("folder", "/data", ids, {"path": ids})
    rng = np.random.default_rng(0)
    spatial = 7 * 7

    def shard(index: int) -> ScanResult:
        start = index * shard_images
        acc = UnitAccumulator(layers * channels, k, torch.device("cpu"))
        values = torch.from_numpy(rng.lognormal(0.0, 1.0, (shard_images, layers * channels, spatial)).astype(np.float32))
        positions = torch.arange(start, start + shard_images, dtype=torch.int64)
        ranks = torch.from_numpy(np.array(listing.keys[start:start + shard_images]))
        acc.add(reduce_activation(values), positions, ranks)
        totals = acc.finish()
        extremes = {"top": totals.top.result(), "bottom": totals.bottom.result()}
        result_layers = {}
        for i, name in enumerate(names):
            lo, hi = i * channels, (i + 1) * channels
            parts = {kind: Examples(*(a[lo:hi].copy() for a in arrays),
                                    np.zeros((channels, k, 4), dtype=np.int32))
                     for kind, arrays in extremes.items()}
            result_layers[name] = LayerResult(
                layer=name, layout="nchw", channels=channels, spatial=(7, 7), top=parts["top"], bottom=parts["bottom"],
                images=totals.images[lo:hi].copy(), nonfinite=totals.nonfinite[lo:hi].copy(),
                sums=totals.sums.select(units=slice(lo, hi)), max_positive=totals.max_positive[lo:hi].copy(),
                sketch=totals.sketch.select(lo, hi))
        return ScanResult(model="bench", weights_digest="0" * 64, listing=listing.fingerprint, input_size=224, k=k,
                          ranges=((start, start + shard_images),), scanned=shard_images, skipped=(),
                          image_ids={p: ids[p] for p in range(start, start + shard_images)}, layers=result_layers)

    writer = AtlasWriter.create(str(folder))
    finest = [shard(i) for i in range(max(SHARD_COUNTS))]
    keys: dict[int, list[str]] = {}
    for count in SHARD_COUNTS:
        group = max(SHARD_COUNTS) // count
        keys[count] = []
        for index in range(count):
            result = merge_results(finest[index * group:(index + 1) * group])
            key = f"scan-{count}-{index:04d}"
            with writer.item(key) as out:
                for position, name in enumerate(names):
                    write_partial_arrays(out, partial_name(position), result.layer_only(name).state())
            keys[count].append(key)
    return {"version": writer.version, "keys": {str(c): v for c, v in keys.items()}, "layers": names}


def measure(folder: str, version: str, keys: list[str], layers: list[str], mode: str) -> dict:
    """One reduce in this process: heap peak, RSS peak above the post-import baseline, seconds."""
    from loupe.jobs.build.scan_stage import partial_name, reduce_layer
    from loupe.pipeline.scan import ScanResult
    from loupe.storage import AtlasWriter
    from loupe.storage.build_state import read_partial_arrays

    writer = AtlasWriter.resume(folder, version)

    def whole_shard(key: str) -> list[ScanResult]:
        return [ScanResult.from_state(read_partial_arrays(writer, key, partial_name(i))) for i in range(len(layers))]

    rss_before = _reset_peak_rss()
    tracemalloc.start()
    started = time.perf_counter()
    if mode == "per-layer":
        merged = reduce_layer(writer, keys, layers[0], 0)
        rows = merged.units_table().num_rows + merged.examples_table().num_rows
    else:
        shards = (whole_shard(key) for key in keys)
        if mode == "all-at-once":
            shards = iter([whole_shard(key) for key in keys])
        merged = next(shards)
        for parts in shards:
            merged = _merge_lists(merged, parts)
        rows = sum(r.units_table().num_rows + r.examples_table().num_rows for r in merged)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = _peak_rss_kb() - rss_before
    return {"heap_mb": peak / 2**20, "rss_mb": rss / 1024, "seconds": seconds, "rows": rows}


def _peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (Linux), so the peak measured is the reduce's, not the imports'."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _peak_rss_kb()


def _merge_lists(a, b):
    """Per-model modes fold lists of single-layer results layer by layer."""
    return [x.merge(y) for x, y in zip(a, b)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--shard-images", type=int, default=8, help="images per shard at 256 shards")
    parser.add_argument("--modes", default="per-layer,all-at-once", help=f"any of {','.join(MODES)}")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        job = json.loads(args.measure)
        print(json.dumps(measure(job["folder"], job["version"], job["keys"], job["layers"], job["mode"])))
        return

    with tempfile.TemporaryDirectory(prefix="loupe-reduce-bench-") as tmp:
        started = time.perf_counter()
        data = synthesize(Path(tmp), args.layers, args.channels, args.k, args.shard_images)
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*.npz")) / 2**20
        print(f"synthesized {args.layers} layers x {args.channels} channels, k={args.k}, "
              f"{max(SHARD_COUNTS) * args.shard_images} images, partials {size:.0f} MB on disk "
              f"in {time.perf_counter() - started:.1f} s")
        print(f"{'mode':<12}{'shards':>7}{'heap MB':>10}{'x16':>7}{'RSS MB':>9}{'x16':>7}{'seconds':>9}{'x16':>7}")
        for mode in args.modes.split(","):
            base = None
            for count in SHARD_COUNTS:
                job = {"folder": tmp, "version": data["version"], "keys": data["keys"][str(count)],
                       "layers": data["layers"], "mode": mode}
                out = subprocess.run([sys.executable, __file__, "--measure", json.dumps(job)], check=True,
                                     capture_output=True, text=True).stdout
                got = json.loads(out.strip().splitlines()[-1])
                base = base or got
                print(f"{mode:<12}{count:>7}{got['heap_mb']:>10.1f}{got['heap_mb'] / base['heap_mb']:>7.2f}"
                      f"{got['rss_mb']:>9.1f}{got['rss_mb'] / max(base['rss_mb'], 1e-9):>7.2f}"
                      f"{got['seconds']:>9.2f}{got['seconds'] / base['seconds']:>7.2f}")


if __name__ == "__main__":
    main()
