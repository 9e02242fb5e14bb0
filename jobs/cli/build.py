"""`loupe build CONFIG` (also `python -m loupe build CONFIG`): the main job.

Submit it to a cluster with `ray job submit --working-dir . -- loupe build CONFIG`; run it with
no cluster address and it starts a local Ray on 127.0.0.1.
"""

from __future__ import annotations

import argparse

from loupe.jobs.build.config import BuildConfig, load_config
from loupe.jobs.build.resolve import ResolvedModel


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
        print(f"config {args.config} is valid: {describe_work(config, models)}")
        return 0

    from loupe.jobs.build import run_build

    summary = run_build(config, executor=args.executor, address=args.address, device=args.device,
                        progress=False if args.no_progress else None)
    for line in summary.lines():
        print(line)
    if summary.published or summary.unchanged:
        from loupe.jobs.cli.view import view_command

        print(f"atlas: {config.atlas.url}")
        print(f"  look inside:  loupe atlas show {config.atlas.url}")
        print(f"  in Python:    loupe.open_atlas({config.atlas.url!r}).unit(model, layer, unit)")
        print(f"  in a browser: {view_command(config.atlas.url)}")
        return 0
    return 1


def describe_work(config: BuildConfig, models: list[ResolvedModel]) -> str:
    """What a build renders and what it scans, counted separately: `units:` limits renders only,
    while a scan measures every channel of each layer."""
    layers = len({(m.id, layer.info.name) for m in models for layer in m.layers})
    bases = sum(layer.basis is not None for m in models for layer in m.layers)
    per_kind: dict[str, int] = {}
    images = 0
    for model in models:
        for layer in model.layers:
            for kind, settings in layer.render.items():
                per_kind[kind] = per_kind.get(kind, 0) + len(layer.units)
                images += len(layer.units) * (settings.images_per_unit if kind == "diversity" else 1)
    rendered = max(per_kind.values(), default=0)
    kinds = ", ".join(f"{kind} {count}" for kind, count in per_kind.items())
    renders = (f"renders {rendered} unit(s) in {len(per_kind)} kind(s) ({kinds}; {images} images)"
               if per_kind else "renders nothing")
    if config.scan is not None and config.scan.enabled:
        scanned = sum(layer.width for m in models for layer in m.layers)
        scan = f"scans all {scanned} unit(s) of those layers and bases over {config.scan.dataset.url}"
        examples = config.scan.examples
        if examples.enabled:
            bands = len(examples.quantiles) - 1
            scan += (f", storing {config.scan.k} top and {config.scan.k} bottom example pictures and "
                     f"{bands} x {examples.samples_per_band} band samples per unit ({examples.example_size} px)")
    else:
        scan = "scans nothing"
    with_bases = f" ({bases} file basis/bases besides channels)" if bases else ""
    return f"{len(models)} model(s), {layers} layer(s){with_bases}; {renders}; {scan}"
