"""Symlinks that lead out of a dataset folder are skipped and counted with a reason, never followed."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from loupe.pipeline.data import LoaderOptions, iter_batches, list_images
from loupe.pipeline.data.loader import OUTSIDE_ROOT


def picture(path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_links_out_of_the_root_are_skipped_and_links_inside_are_scanned(tmp_path):
    root, outside = tmp_path / "dataset", tmp_path / "private"
    picture(root / "real.png", 10)
    picture(root / "sub" / "deep.png", 20)
    picture(outside / "secret.png", 200)
    picture(outside / "folder" / "also-secret.png", 210)
    os.symlink(root / "sub" / "deep.png", root / "inside-link.png")
    os.symlink(outside / "secret.png", root / "escape.png")
    os.symlink("../private/secret.png", root / "relative-escape.png")
    os.symlink(outside / "folder", root / "escaped-folder")

    listing = list_images(str(root))
    batches = list(iter_batches(listing, 8, 8, options=LoaderOptions(images_per_batch=4, workers=0)))
    scanned = sorted(listing.ids(np.concatenate([b.positions for b in batches]) - listing.start))
    skipped = {s.image_id: s.reason for b in batches for s in b.skipped}

    assert scanned == ["inside-link.png", "real.png", "sub/deep.png"]
    assert skipped == {"escape.png": OUTSIDE_ROOT, "relative-escape.png": OUTSIDE_ROOT}
    # A linked folder is not descended into at all.
    assert not any(i.startswith("escaped-folder") for i in listing.ids(np.arange(len(listing))))
    pixels = np.concatenate([b.images.numpy() for b in batches])
    assert pixels.max() <= 20, "bytes from outside the dataset root were read"
