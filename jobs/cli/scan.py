"""`loupe scan`: scan a dataset locally and print what excites a few units, for quick looks.

    loupe scan torchvision:mobilenet_v2 ./photos --layers features.10,features.14 --weights W.pth

The atlas build runs the same scan per shard on Ray; this command is for one machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from loupe.jobs.cli.models import add_model_arguments, print_table
from loupe.pipeline.data import DECODERS, LoaderOptions, list_images
from loupe.pipeline.errors import LoupeError
from loupe.pipeline.models import LoadedModel, Preprocessing, load_model
from loupe.pipeline.scan import ScanOptions, ScanProgress, ScanResult, Scanner, scan_dataset
from loupe.pipeline.scan.layout import to_yx


def add_scan_command(subparsers) -> None:
    """Register `scan SOURCE DATASET --layers L1,L2 [--k 16] [--weights W] ...`."""
    parser = subparsers.add_parser(
        "scan", help="scan a dataset: top and bottom images, positions and statistics for every unit"
    )
    add_model_arguments(parser, weights_default="none")
    parser.add_argument("dataset", help="folder or prefix of images, or Parquet table(s); local path or fsspec URL")
    parser.add_argument("--layers", required=True, help="comma-separated layer names (see `loupe layers`)")
    parser.add_argument("--k", type=int, default=16, help="top and bottom examples kept per unit (default 16)")
    parser.add_argument("--images-per-batch", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--workers", type=int, default=2, help="decoding worker processes (default 2; 0 = none)")
    parser.add_argument("--limit", type=int, default=None, help="scan only the first N images of the listing")
    parser.add_argument("--input-range", default=None, metavar="LOW,HIGH",
                        help="model input range instead of the declared mean/std, e.g. --input-range=-1,1 for x/127.5-1")
    parser.add_argument("--input-size", type=int, default=None, help="override the model's input size")
    parser.add_argument("--format", default="auto", choices=("auto", "images", "parquet"), help="dataset format")
    parser.add_argument("--image-column", default=None, help="Parquet column holding encoded images")
    parser.add_argument("--id-column", default=None, help="Parquet column holding image ids")
    parser.add_argument("--storage-options", default=None, metavar="JSON",
                        help='fsspec options for the dataset URL, e.g. \'{"anon": true}\'')
    parser.add_argument("--decode", default="pillow", choices=DECODERS,
                        help="pillow: decode in --workers processes (default); device: JPEGs on the model's device "
                             "(nvJPEG on a GPU), within a grey level of Pillow")
    parser.add_argument("--show", type=int, default=3, help="units per layer whose examples are printed (default 3)")
    parser.add_argument("--out", default=None, help="also write units/examples/skipped tables as Parquet here")
    parser.set_defaults(func=run_scan)


def run_scan(args: argparse.Namespace) -> int:
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    if not layers:
        raise LoupeError("--layers names no layer (e.g. --layers features.10,features.14)")
    storage_options = _storage_options(args.storage_options)
    options = ScanOptions(k=args.k, pooled=False)
    loader = LoaderOptions(images_per_batch=args.images_per_batch, workers=args.workers, decode=args.decode)
    model = _load(args)
    scanner = Scanner(model, layers, options)  # unknown layers fail here, before listing a bucket
    listing = list_images(args.dataset, storage_options=storage_options, format=args.format,
                          image_column=args.image_column, id_column=args.id_column)
    if args.limit is not None:
        if args.limit < 1:
            raise LoupeError(f"--limit must be a positive number of images, got {args.limit}")
        listing = listing.slice(listing.start, min(listing.stop, listing.start + args.limit))
    print(model.describe())
    ignored = f"; ignored {listing.ignored} other files" if listing.ignored else ""
    print(f"dataset {listing.root}: {len(listing)} images{ignored}")
    if model.weights.startswith("none"):
        print("note: random weights (pass --weights for a trained model)")

    print("probing receptive fields (once per model) ...", file=sys.stderr, flush=True)
    scanner.receptive_fields  # noqa: B018 - computed once, before the timed scan
    started = time.perf_counter()
    result = scan_dataset(model, listing, scanner, loader=loader, storage_options=storage_options,
                          on_progress=_progress_printer())
    print(file=sys.stderr)
    elapsed = time.perf_counter() - started
    print(result.summary())
    print(f"time {elapsed:.1f}s ({len(listing) / max(elapsed, 1e-9):.1f} images/s)")
    _print_skipped(result)
    for name in layers:
        _print_layer(result, name, args.show)
    if args.out:
        _write_tables(result, Path(args.out))
    return 0 if result.scanned else 1


def _load(args: argparse.Namespace) -> LoadedModel:
    model = load_model(args.source, args.weights, device=args.device, state_dict_key=args.state_dict_key,
                       strip_prefix=args.strip_prefix)
    if args.input_range is None and args.input_size is None:
        return model
    declared = model.preprocessing
    size = args.input_size or declared.input_size
    resize = 0 if args.input_size else declared.resize_size
    if args.input_range is not None:
        try:
            low, high = (float(v) for v in args.input_range.split(","))
        except ValueError:
            raise LoupeError(f"--input-range must be LOW,HIGH (e.g. --input-range=-1,1), got {args.input_range!r}") from None
        preprocessing = Preprocessing.from_range(low, high, input_size=size, resize_size=resize)
    else:
        preprocessing = Preprocessing(mean=declared.mean, std=declared.std, input_size=size, resize_size=resize)
    return LoadedModel(model.module, preprocessing=preprocessing, device=model.device, name=model.name,
                       weights=model.weights, categories=model.categories)


def _storage_options(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoupeError(f"--storage-options is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise LoupeError("--storage-options must be a JSON object")
    return value


def _progress_printer():
    def report(progress: ScanProgress) -> None:
        print(
            f"\rscanned {progress.done}/{progress.total} images ({progress.skipped} skipped, "
            f"{progress.images_per_second:.1f} images/s)",
            end="", file=sys.stderr, flush=True,
        )

    return report


def _print_skipped(result: ScanResult, limit: int = 10) -> None:
    if not result.skipped:
        return
    print(f"\nskipped {len(result.skipped)} images:")
    for item in result.skipped[:limit]:
        print(f"  {item.image_id}: {item.reason}")
    if len(result.skipped) > limit:
        print(f"  ... and {len(result.skipped) - limit} more")


def _print_layer(result: ScanResult, name: str, show: int) -> None:
    layer = result.layers[name]
    stats = layer.statistics()
    print(f"\n{name}: {layer.channels} units, feature map {'x'.join(map(str, layer.spatial)) or '-'}")
    rows = []
    for unit in range(min(show, layer.channels)):
        print(f"  unit {name}:{unit}  max mean {stats['max_mean'][unit]:.4g}  std {stats['max_std'][unit]:.4g}  "
              f"median {stats['max_p50'][unit]:.4g}  fires in {stats['max_frac_positive'][unit]:.0%} of images")
        for kind, part in (("top", layer.top), ("bottom", layer.bottom)):
            values = part.values(kind == "bottom")[unit]
            for rank in range(min(3 if kind == "top" else 1, result.k)):
                index = int(part.image_index[unit, rank])
                if index < 0:
                    continue
                y0, x0, y1, x1 = part.box[unit, rank].tolist()
                y, x = (int(v) for v in to_yx(part.position[unit, rank], layer.spatial))
                rows.append((f"{name}:{unit}", kind, str(rank), f"{values[rank]:.4g}", result.image_ids[index],
                             f"({y}, {x})", f"[{y0}:{y1}, {x0}:{x1}]"))
    if rows:
        print()
        print_table(("unit", "kind", "rank", "value", "image", "(y, x)", "crop [y0:y1, x0:x1]"), rows)


def _write_tables(result: ScanResult, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in (("units", result.units_table()), ("examples", result.examples_table()),
                        ("skipped", result.skipped_table())):
        pq.write_table(table, folder / f"{name}.parquet")
    print(f"\nwrote units, examples and skipped tables to {folder}")
