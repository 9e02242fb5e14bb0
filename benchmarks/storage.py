"""Atlas store vs one PNG object per render (what OpenAI Microscope did), on a local S3 server.

Writes and reads 1024 renders of 128x128x3 both ways against moto's S3 API on 127.0.0.1, in one
run, and prints objects, requests, bytes and times with the ratios between them.
Targets (issue 5): >= 10x fewer objects, >= 3x faster writes, <= 3 requests to read one unit.

    python benchmarks/storage.py [--units 1024] [--size 128] [--units-per-shard 64]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loupe.storage import AtlasWriter, open_atlas  # noqa: E402


class S3Requests:
    """Counts the HTTP requests botocore sends, from every S3 client in this process."""

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> "S3Requests":
        from aiobotocore.endpoint import AioEndpoint

        self._original = original = AioEndpoint._send

        async def counting_send(endpoint, request):
            self.count += 1
            return await original(endpoint, request)

        AioEndpoint._send = counting_send
        return self

    def __exit__(self, *exc) -> None:
        from aiobotocore.endpoint import AioEndpoint

        AioEndpoint._send = self._original


def renders(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth, colourful textures with a little noise, roughly like feature visualizations."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        f = rng.uniform(2, 12, (3, 2))
        phase = rng.uniform(0, 2 * np.pi, 3)
        img = np.stack([np.sin(2 * np.pi * (f[c, 0] * x + f[c, 1] * y) + phase[c]) for c in range(3)], -1)
        img = (img * 0.5 + 0.5) * 255 + rng.normal(0, 8, (size, size, 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def png_image(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=1024)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--units-per-shard", type=int, default=64)
    args = parser.parse_args()

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    options = {"key": "bench", "secret": "bench", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    fs = s3fs.S3FileSystem(**options, max_concurrency=1, use_listings_cache=False)

    n, ups = args.units, args.units_per_shard
    images = renders(n, args.size)
    objective = np.linspace(0, 1, n, dtype=np.float32)
    print(f"{n} renders of {args.size}x{args.size}x3 on moto S3 at {endpoint}; Loupe shards of {ups} units\n")

    # --- baseline: one PNG object per render, written one after another, as one worker would.
    with S3Requests() as req:
        t0 = time.perf_counter()
        for unit in range(n):
            fs.pipe_file(f"bench/png/model/layer/channel/{unit}.png", png_bytes(images[unit]))
        png_write = time.perf_counter() - t0
    png_write_requests = req.count
    # --- baseline, best case: the same objects uploaded concurrently in one batch.
    t0 = time.perf_counter()
    fs.pipe({f"bench/png-batch/{u}.png": png_bytes(images[u]) for u in range(n)})
    png_batch_write = time.perf_counter() - t0
    png_objects = len(fs.find("bench/png"))
    png_bytes_total = sum(fs.du("bench/png", total=False).values())

    # --- Loupe: one work item per shard-sized block of units, each item written by one worker.
    url = "s3://bench/atlas"
    with S3Requests() as req:
        t0 = time.perf_counter()
        writer = AtlasWriter.create(url, storage_options=options)
        writer.declare_renders("model", "layer", "channel", n_units=n, height=args.size, width=args.size, units_per_shard=ups)
        for start in range(0, n, ups):
            with writer.item(f"render-{start}") as item:
                item.write_render_block("model", "layer", "channel", start, images[start:start + ups],
                                        objective[start:start + ups])
        loupe_write = time.perf_counter() - t0
        loupe_write_requests = req.count
        t0 = time.perf_counter()
        writer.publish()
        loupe_publish = time.perf_counter() - t0
    loupe_objects = len(fs.find(f"bench/atlas/versions/{writer.version}"))
    loupe_bytes = sum(fs.du(f"bench/atlas/versions/{writer.version}", total=False).values())
    loupe_total_requests = req.count

    # --- reading one unit, and a whole layer for a grid view.
    rng = np.random.default_rng(1)
    probe = rng.choice(n, 32, replace=False)
    with S3Requests() as req:
        t0 = time.perf_counter()
        atlas = open_atlas(url, storage_options=options)
        open_requests = req.count
        open_time = time.perf_counter() - t0
        req.count = 0
        t0 = time.perf_counter()
        for unit in probe:
            assert np.array_equal(atlas.render("model", "layer", int(unit)), images[unit])
        loupe_unit_time = (time.perf_counter() - t0) / len(probe)
        loupe_unit_requests = req.count / len(probe)
        req.count = 0
        t0 = time.perf_counter()
        _, grid = atlas.layer_renders("model", "layer")
        loupe_grid = time.perf_counter() - t0
        loupe_grid_requests = req.count
    assert np.array_equal(grid, images)
    with S3Requests() as req:
        t0 = time.perf_counter()
        for unit in probe:
            assert np.array_equal(png_image(fs.cat_file(f"bench/png/model/layer/channel/{unit}.png")), images[unit])
        png_unit_time = (time.perf_counter() - t0) / len(probe)
        png_unit_requests = req.count / len(probe)
        req.count = 0
        t0 = time.perf_counter()
        blobs = fs.cat([f"bench/png/model/layer/channel/{u}.png" for u in range(n)])
        png_grid_images = [png_image(blobs[f"bench/png/model/layer/channel/{u}.png"]) for u in range(n)]
        png_grid = time.perf_counter() - t0
        png_grid_requests = req.count
    assert np.array_equal(np.stack(png_grid_images), images)
    server.stop()

    def row(name, png, loupe, unit="", better="lower"):
        ratio = (png / loupe if better == "lower" else loupe / png) if loupe else float("inf")
        print(f"  {name:<34} {png:>12.4g}{unit:<3} {loupe:>12.4g}{unit:<3} {ratio:>8.1f}x")

    print(f"  {'':<34} {'PNG/object':>15} {'Loupe':>15} {'ratio':>9}")
    row("objects written", png_objects, loupe_objects)
    row("write requests", png_write_requests, loupe_write_requests)
    row("bytes stored", png_bytes_total / 1e6, loupe_bytes / 1e6, " MB")
    row("write time (sequential)", png_write, loupe_write, " s")
    row("write time (PNG batched, concurrent)", png_batch_write, loupe_write, " s")
    row("read one unit: requests", png_unit_requests, loupe_unit_requests)
    row("read one unit: time", png_unit_time * 1e3, loupe_unit_time * 1e3, " ms")
    row("read layer grid: requests", png_grid_requests, loupe_grid_requests)
    row("read layer grid: time (PNG batched)", png_grid, loupe_grid, " s")
    print(f"\n  Loupe publish (manifest + checksums + pointer CAS): {loupe_publish:.3f} s, "
          f"{loupe_total_requests - loupe_write_requests} requests")
    print(f"  open_atlas: {open_requests} requests, {open_time * 1e3:.1f} ms; one unit after open: "
          f"{loupe_unit_requests:.0f} requests (cold, open included: {open_requests + loupe_unit_requests:.0f})")
    ok = (png_objects / loupe_objects >= 10, png_write / loupe_write >= 3, loupe_unit_requests <= 3)
    print(f"  targets: >=10x fewer objects {'met' if ok[0] else 'MISSED'}; >=3x faster writes "
          f"{'met' if ok[1] else 'MISSED'}; <=3 requests per unit {'met' if ok[2] else 'MISSED'}")


if __name__ == "__main__":
    main()
