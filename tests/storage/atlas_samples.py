"""Small atlases written through the real writer, shared by the storage tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass
class Target:
    """An atlas root URL with the storage_options needed to reach it."""

    kind: str
    url: str
    options: dict | None


def make_images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def units_table(units: range) -> pa.Table:
    return pa.table({"unit": list(units), "mean": [float(u) / 10 for u in units], "count": [100] * len(units)})


def examples_table(units: range, k: int = 2) -> pa.Table:
    rows = [(u, "top", r, f"img{(u + r) % 7}", float(u) - r, r, u % 3) for u in units for r in range(k)]
    cols = list(zip(*rows))
    return pa.table({"unit": list(cols[0]), "which": list(cols[1]), "rank": list(cols[2]), "image_id": list(cols[3]),
                     "value": list(cols[4]), "y": list(cols[5]), "x": list(cols[6])})


N_UNITS = 10
UNITS_PER_SHARD = 4
N_IMAGES = 12
N_CHANNELS = 10
IMAGES_PER_CHUNK = 6


@dataclass
class Built:
    """What a small build wrote, to compare against what the reader returns."""

    version: str
    images: np.ndarray
    diverse: np.ndarray
    activations: np.ndarray
    keys: list[str]


def declare_small(writer, model: str = "net", layer: str = "conv1") -> None:
    writer.declare_renders(model, layer, "channel", n_units=N_UNITS, height=8, width=8, units_per_shard=UNITS_PER_SHARD)
    writer.declare_renders(model, layer, "diversity", n_units=N_UNITS, height=8, width=8,
                           units_per_shard=UNITS_PER_SHARD, samples=2)
    writer.declare_activations(model, layer, n_images=N_IMAGES, n_channels=N_CHANNELS, images_per_chunk=IMAGES_PER_CHUNK)


def write_small(writer, seed: int = 0, model: str = "net", layer: str = "conv1", skip: set | None = None) -> Built:
    """A complete small layer: two render kinds in 3 shards each, 2 scan shards, tables."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (N_UNITS, 8, 8, 3), dtype=np.uint8)
    diverse = rng.integers(0, 256, (N_UNITS, 2, 8, 8, 3), dtype=np.uint8)
    acts = rng.standard_normal((N_IMAGES, N_CHANNELS)).astype(np.float16)
    declare_small(writer, model, layer)
    keys = []
    for start in range(0, N_UNITS, UNITS_PER_SHARD):
        stop = min(start + UNITS_PER_SHARD, N_UNITS)
        for kind, data in (("channel", images), ("diversity", diverse)):
            key = f"render-{model}-{layer}-{kind}-{start}-s{seed}"
            keys.append(key)
            if skip and key in skip:
                continue
            objective = np.arange(start, stop, dtype=np.float32) + seed
            if kind == "diversity":
                objective = np.stack([objective, -objective], axis=1)
            with writer.item(key) as item:
                item.write_render_block(model, layer, kind, start, data[start:stop], objective)
    for start in range(0, N_IMAGES, IMAGES_PER_CHUNK):
        key = f"scan-{model}-{start}-s{seed}"
        keys.append(key)
        with writer.item(key, meta={"skipped_images": 0}) as item:
            chunk = acts[start:start + IMAGES_PER_CHUNK]
            item.write_activations(model, layer, start, max=chunk, mean=chunk / 2)
            item.write_images(pa.table({"image_id": [f"img{i}" for i in range(start, start + len(chunk))],
                                        "uri": [f"data/img{i}.jpg" for i in range(start, start + len(chunk))]}))
    key = f"reduce-{model}-s{seed}"
    keys.append(key)
    with writer.item(key) as item:
        item.write_units(model, layer, units_table(range(N_UNITS)))
        item.write_examples(model, layer, examples_table(range(N_UNITS)))
    return Built(writer.version, images, diverse, acts, keys)


class S3Requests:
    """Counts HTTP requests that botocore sends to S3, from every client in this process."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str | None]] = []

    def __enter__(self) -> "S3Requests":
        from aiobotocore.endpoint import AioEndpoint

        self._original = original = AioEndpoint._send
        sent = self.sent

        async def counting_send(endpoint, request):
            sent.append((request.method, request.url.split("?")[0], request.headers.get("Range")))
            return await original(endpoint, request)

        AioEndpoint._send = counting_send
        return self

    def __exit__(self, *exc) -> None:
        from aiobotocore.endpoint import AioEndpoint

        AioEndpoint._send = self._original

    def clear(self) -> None:
        self.sent.clear()
