"""Small datasets and models for scan tests: PNG folders, Parquet tables, corrupt files, tiny nets."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch import nn

from loupe.pipeline.models import LoadedModel, Preprocessing


def random_images(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def corrupt_files(size: int = 12) -> dict[str, bytes]:
    """One file of each kind a real dataset contains by accident, named by what is wrong."""
    photo = np.random.default_rng(99).integers(0, 256, (size * 4, size * 4, 3), dtype=np.uint8)
    jpeg, png = jpeg_bytes(photo), png_bytes(photo)
    return {
        "bad_empty.jpg": b"",
        "bad_text.jpg": b"this is not an image, it is a note someone saved as .jpg\n",
        "bad_truncated.jpg": jpeg[: len(jpeg) // 2],
        "bad_truncated.png": png[: len(png) // 2],
        "bad_header_only.png": png[:40],
        "bad_garbage.webp": bytes(np.random.default_rng(7).integers(0, 256, 500, dtype=np.uint8)),
    }


def write_folder(folder: Path, images: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def write_parquet(path: Path, images: dict[str, bytes | None], row_group_size: int = 16) -> Path:
    """A table with an id column and a binary image column, rows in sorted id order."""
    names = sorted(images)
    table = pa.table({"name": pa.array(names), "label": pa.array(range(len(names))),
                      "image": pa.array([images[n] for n in names], pa.binary())})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


class TinyNet(nn.Module):
    """conv -> in-place ReLU (so pre-ReLU reads matter) -> strided conv -> Hardtanh (many exact ties)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 5, 3, stride=2, padding=1)
        self.clamp = nn.Hardtanh(-0.05, 0.05)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(5, 4, 1)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        x = self.clamp(self.conv2(x))
        return self.conv3(self.pool(x)).mean(dim=(2, 3))


LAYERS = ["conv1", "clamp", "conv3"]


def tiny_model(input_size: int = 10, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    return LoadedModel.from_module(
        TinyNet(), preprocessing=Preprocessing(input_size=input_size, resize_size=input_size), device="cpu",
        name="tiny",
    )


class _Payload:
    """Unpickling this creates `marker` (the stand-in for an attacker's code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def planted_pickle(marker: Path) -> bytes:
    """A pickle whose loading would run code: it creates the file `marker`."""
    import pickle

    return pickle.dumps({"boxes": _Payload(str(marker))})
