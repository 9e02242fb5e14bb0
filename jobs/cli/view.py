"""`loupe view ATLAS_URL`: serve the atlas viewer on 127.0.0.1 (local folder or s3:// alike).

    loupe view atlas/quickstart
    loupe view s3://bucket/atlases/inception --storage-options '{"profile": "research"}'

Reads through Loupe's reader with the same storage options and credential chain as builds, so a
private bucket works without making it public. Binds to loopback unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import json

from loupe.storage import open_atlas

LOOPBACK = "127.0.0.1"


def add_view_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("view", help="browse an atlas in a web browser (served on 127.0.0.1)")
    parser.add_argument("url", help="atlas root: a local folder, s3://bucket/prefix or another fsspec URL")
    parser.add_argument("--version", dest="atlas_version", default=None,
                        help="show this version when a page names none (default: the published one)")
    parser.add_argument("--port", type=int, default=8700, help="port to serve on (default 8700; 0 picks a free one)")
    parser.add_argument("--host", default=LOOPBACK,
                        help="address to bind (default 127.0.0.1; anything else exposes the atlas to that network)")
    parser.add_argument("--storage-options", type=json.loads, default=None, metavar="JSON",
                        help='fsspec options as JSON, e.g. \'{"client_kwargs": {"endpoint_url": "http://..."}}\'')
    parser.add_argument("--whole-objects", action="store_true",
                        help="fetch array objects whole and check their SHA-256 (for stores that mis-serve byte ranges)")
    parser.set_defaults(func=run_view)


def run_view(args: argparse.Namespace) -> int:
    import uvicorn

    from loupe.jobs.view import create_app

    # Fail before serving: an unknown atlas or version is named here, not on the first page load.
    atlas = open_atlas(args.url, args.atlas_version, args.storage_options, ranged_reads=not args.whole_objects)
    app = create_app(args.url, version=args.atlas_version, storage_options=args.storage_options,
                     ranged_reads=not args.whole_objects)
    port = args.port or free_port(args.host)
    config = uvicorn.Config(app, host=args.host, port=port, log_level="warning")
    server = uvicorn.Server(config)
    print(f"loupe view: {args.url} version {atlas.version}")
    print(f"  serving on http://{args.host}:{port}/  (Ctrl-C to stop)", flush=True)
    server.run()
    return 0


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on now (the OS picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def view_command(url: str) -> str:
    """The command line that opens an atlas in the viewer (printed at the end of a build)."""
    import shlex

    return f"loupe view {shlex.quote(url)}"
