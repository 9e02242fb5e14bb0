"""`loupe scan` as registered by jobs.scan_command: summary, top examples, tables, clear errors."""

from __future__ import annotations

import argparse

import pyarrow.parquet as pq
import pytest

from loupe.jobs.cli.scan import add_scan_command
from loupe.pipeline.errors import LoupeError

from .helpers import corrupt_files, png_bytes, random_images, write_folder


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="loupe")
    add_scan_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture
def photos(tmp_path):
    files = {f"p{i:02d}.png": png_bytes(a) for i, a in enumerate(random_images(12, 40, seed=4))}
    files["zz_broken.jpg"] = corrupt_files()["bad_text.jpg"]
    return write_folder(tmp_path / "photos", files)


def test_scan_prints_summary_examples_and_writes_tables(photos, tmp_path, capsys):
    code = run("scan", "torchvision:mobilenet_v2", str(photos), "--layers", "features.2,features.4",
               "--k", "4", "--input-size", "32", "--input-range=-1,1", "--workers", "0", "--images-per-batch", "5",
               "--show", "2", "--out", str(tmp_path / "tables"))
    out = capsys.readouterr().out
    assert code == 0
    assert "scanned 12 of 13 images" in out and "zz_broken.jpg: not an image" in out
    assert "features.2:1" in out and "features.4:0" in out and "crop [y0:y1, x0:x1]" in out
    examples = pq.read_table(tmp_path / "tables" / "examples.parquet")
    assert examples.num_rows == (24 + 32) * 4 * 2
    assert pq.read_table(tmp_path / "tables" / "units.parquet").num_rows == 24 + 32


def test_scan_rejects_unknown_layers_before_listing(tmp_path):
    with pytest.raises(LoupeError, match="features.99"):
        run("scan", "torchvision:mobilenet_v2", str(tmp_path / "never-listed"), "--layers", "features.99",
            "--input-size", "32")
    with pytest.raises(LoupeError, match="does not exist"):
        run("scan", "torchvision:mobilenet_v2", str(tmp_path / "missing"), "--layers", "features.2",
            "--input-size", "32")
