"""`loupe models` and `loupe layers`: what can be loaded, and every addressable layer of a model."""

from __future__ import annotations

import argparse
import fnmatch
import json

from loupe.pipeline.models import load_model, torchvision_builders
from loupe.pipeline.models.sources import torchvision_weight_names


def add_model_arguments(parser: argparse.ArgumentParser, weights_default: str | None = None) -> None:
    """Options shared by every command that loads a model."""
    parser.add_argument("source", help="torchvision:<builder> or package.module:callable")
    parser.add_argument(
        "--weights",
        default=weights_default,
        help="'none' (random init), a torchvision weight name (DEFAULT, IMAGENET1K_V1, ...), weights shipped with Loupe "
             "(bundled:mobilenet_v2_imagenet), or a path/URL to a state dict",
    )
    parser.add_argument("--state-dict-key", default=None, help="take the state dict nested under this key")
    parser.add_argument("--strip-prefix", default=None, help="drop this prefix from every key (e.g. 'module.')")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu; default: CUDA when present")


def model_from_args(args: argparse.Namespace):
    return load_model(
        args.source,
        args.weights,
        device=args.device,
        state_dict_key=args.state_dict_key,
        strip_prefix=args.strip_prefix,
    )


def add_model_commands(subparsers) -> None:
    models = subparsers.add_parser("models", help="list the torchvision builders Loupe can load")
    models.add_argument("--task", default=None, help="only builders of this task (classification, detection, ...)")
    models.set_defaults(func=run_models)

    layers = subparsers.add_parser("layers", help="list every addressable layer of a model")
    add_model_arguments(layers, weights_default="none")
    layers.add_argument("--match", default=None, help="only layers whose name matches this glob (e.g. 'features.*')")
    layers.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    layers.set_defaults(func=run_layers)


def run_models(args: argparse.Namespace) -> int:
    rows = [
        (name, task, ", ".join(torchvision_weight_names(name)) or "-")
        for name, task in torchvision_builders().items()
        if args.task is None or task == args.task
    ]
    print_table(("source", "task", "weights"), [(f"torchvision:{n}", t, w) for n, t, w in rows])
    print(f"\n{len(rows)} builders; or package.module:callable for a model of your own")
    return 0


def run_layers(args: argparse.Namespace) -> int:
    model = model_from_args(args)
    layers = [
        info for info in model.catalog if args.match is None or fnmatch.fnmatchcase(info.name, args.match)
    ]
    if args.json:
        for info in layers:
            print(json.dumps({"name": info.name, "type": info.module_type, "channels": info.channels,
                              "spatial": list(info.spatial), "layout": info.layout, "parts": list(info.parts)}))
        return 0
    print(model.describe())
    print_table(
        ("layer", "type", "channels", "spatial", "layout"),
        [(i.name, i.module_type, str(i.channels), "x".join(map(str, i.spatial)) or "-", i.layout) for i in layers],
    )
    print(f"\n{len(layers)} layers; address a unit as layer:unit, e.g. {layers[-1].name}:0" if layers else "no layers")
    return 0


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())
