"""The `loupe` command: one entry point, one small module per command group."""

from __future__ import annotations

import argparse
import sys

from loupe.jobs.cli.atlas import add_atlas_commands
from loupe.jobs.cli.build import add_build_arguments, run as run_build
from loupe.jobs.cli.models import add_model_commands
from loupe.jobs.cli.render import add_render_command
from loupe.jobs.cli.sample_images import add_sample_images_command
from loupe.jobs.cli.scan import add_scan_command
from loupe.jobs.cli.view import add_view_command
from loupe.pipeline.errors import LoupeError
from loupe.storage.errors import StorageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loupe", description="Loupe: feature visualizations and dataset examples for every unit of a model."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_model_commands(subparsers)
    add_atlas_commands(subparsers)
    build = subparsers.add_parser("build", help="build and publish an atlas from a config file (the main job)")
    add_build_arguments(build)
    build.set_defaults(func=run_build)
    add_sample_images_command(subparsers)
    add_scan_command(subparsers)
    add_render_command(subparsers)
    add_view_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done; 1 a build ran but published nothing (failed items, a
    lost publish race); 2 bad input or an unusable atlas, dataset or model, named in the message,
    reported before any expensive work (argparse's own usage errors exit 2 as well)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (LoupeError, StorageError) as exc:
        print(f"loupe: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
