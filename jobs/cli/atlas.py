"""`loupe atlas show URL` and `loupe atlas prune URL --keep N`: look after atlases on storage."""

from __future__ import annotations

import argparse
import json

from loupe.storage import VersionNotFoundError, list_versions, open_atlas, prune


def add_atlas_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register the `atlas` command group (show, prune) on a CLI's subparsers."""
    atlas = subparsers.add_parser("atlas", help="inspect and maintain atlases on storage")
    commands = atlas.add_subparsers(dest="atlas_command", required=True, metavar="{show,prune}")

    show = commands.add_parser("show", help="versions, models, layers, counts and status of an atlas")
    _add_common(show)
    show.add_argument("--version", dest="atlas_version", default=None, help="describe this version instead of the published one")
    show.add_argument("--verify", action="store_true", help="also read every object and check its SHA-256")
    show.set_defaults(func=run_show)

    prune_cmd = commands.add_parser("prune", help="delete old published versions, keeping the newest N")
    _add_common(prune_cmd)
    prune_cmd.add_argument("--keep", type=int, required=True, help="how many published versions to keep (>= 1)")
    prune_cmd.add_argument("--drafts", action="store_true",
                           help="also delete unpublished versions older than the current one (drafts a running build holds are kept)")
    prune_cmd.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    prune_cmd.set_defaults(func=run_prune)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="atlas root: a local folder, s3://bucket/prefix or another fsspec URL")
    parser.add_argument("--storage-options", type=json.loads, default=None, metavar="JSON",
                        help='fsspec options as JSON, e.g. \'{"client_kwargs": {"endpoint_url": "http://..."}}\'')


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def run_show(args: argparse.Namespace) -> int:
    versions = list_versions(args.url, args.storage_options)
    print(f"atlas {args.url}")
    if not versions:
        print("  no versions")
        return 0
    print(f"  {'version':<32} {'status':<10} {'created':<21} {'items':>6} {'objects':>8} {'size':>10}")
    for v in versions:
        counts = v.counts
        print(f"  {v.version:<32} {v.status:<10} {v.created_at or '-':<21} {counts.get('items', '-'):>6} "
              f"{counts.get('objects', '-'):>8} {_size(counts['bytes']) if 'bytes' in counts else '-':>10}")
    try:
        atlas = open_atlas(args.url, version=args.atlas_version, storage_options=args.storage_options)
    except VersionNotFoundError as exc:
        print(f"  {exc}")
        return 0 if args.atlas_version is None else 1
    manifest = atlas.manifest
    print(f"version {atlas.version}: code {manifest.get('code_version') or '-'}, "
          f"config sha256 {(manifest.get('config_sha256') or '-')[:12]}, images {manifest['counts']['images']}")
    for model in atlas.models():
        digest = (manifest["models"].get(model) or {}).get("weights_digest", "-")
        print(f"  model {model} (weights {str(digest)[:16]})")
        for layer in atlas.layer_keys(model):  # a layer's channels, and `layer@basis` for each file basis
            entry = manifest["layers"][model][layer]
            kinds = ", ".join(f"{k} {sum(b - a for a, b in r['units'])}" for k, r in sorted(entry["renders"].items()))
            scan = ", ".join(f"{p} {r['shape'][0]}x{r['shape'][1]}" for p, r in sorted(entry["activations"].items()) if r.get("shape"))
            tables = ", ".join(sorted(entry["tables"]))
            print(f"    {layer}: {len(atlas.units(model, layer))} units; renders: {kinds or '-'}; "
                  f"activations: {scan or '-'}; tables: {tables or '-'}")
    if args.verify:
        print(f"verified {atlas.verify()} objects")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    deleted = prune(args.url, args.keep, args.storage_options, drafts=args.drafts, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(deleted)} version(s)" + "".join(f"\n  {v}" for v in deleted))
    return 0
