"""Entry point of the main job: `python -m loupe.jobs.build_atlas CONFIG` (also `loupe build CONFIG`).

Submit it to a cluster with `ray job submit --working-dir . -- python -m loupe.jobs.build_atlas CONFIG`;
run it with no cluster address and it starts a local Ray on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import sys

from loupe.jobs.build.config import load_config
from loupe.pipeline.errors import LoupeError
from loupe.storage.errors import StorageError


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="build config (YAML), e.g. configs/quickstart.yaml")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--executor", choices=("ray", "local"), default="ray",
                        help="'local' runs every item in this process without Ray")
    parser.add_argument("--device", default=None, help="force a device for in-process work (cuda, cpu)")
    parser.add_argument("--validate-only", action="store_true",
                        help="check the config against the model architectures and exit (no weights, storage or data I/O)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.validate_only:
        from loupe.jobs.build.resolve import resolve_build

        models = resolve_build(config, with_weights=False, device="cpu")
        layers = sum(len(m.layers) for m in models)
        units = sum(len(layer.units) for m in models for layer in m.layers)
        print(f"config {args.config} is valid: {len(models)} model(s), {layers} layer(s), {units} unit(s)")
        return 0

    from loupe.jobs.build import run_build

    summary = run_build(config, executor=args.executor, address=args.address, device=args.device,
                        progress=False if args.no_progress else None)
    for line in summary.lines():
        print(line)
    if summary.published or summary.unchanged:
        print(f"atlas: {config.atlas.url}")
        print(f"  look inside:  loupe atlas show {config.atlas.url}")
        print(f"  in Python:    loupe.open_atlas({config.atlas.url!r}).render(model, layer, unit)")
        return 0
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loupe.jobs.build_atlas", description=__doc__.splitlines()[0])
    add_build_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (LoupeError, StorageError) as exc:
        print(f"loupe: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
