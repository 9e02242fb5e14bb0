"""A small built atlas to view (CIFAR ResNet-20 architecture, random weights, synthetic images),
and a real uvicorn server on 127.0.0.1 for it, stopped after use."""

from __future__ import annotations

import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from loupe.jobs.build import run_build
from loupe.jobs.build.config import parse_config
from loupe.jobs.cli.view import free_port
from loupe.jobs.view import create_app

from tests.builds.build_helpers import tiny_config, write_images

CHROMIUM = "/usr/bin/chromium"


def viewer_config(url: str, images: Path) -> dict:
    config = tiny_config(url, str(images))
    config["models"][0]["units"] = "0-11"
    config["render"] = {"channel": {"size": 32, "steps": 3, "units_per_item": 4},
                        "diversity": {"enabled": True, "size": 32, "steps": 3, "units_per_item": 4, "images_per_unit": 2}}
    config["scan"].update(k=3, examples={"example_size": 24, "heatmap_size": 6, "quantiles": [0, 0.5, 1],
                                         "samples_per_band": 2, "histogram_bins": 6})
    return config


@pytest.fixture(scope="session")
def viewer_atlas(tmp_path_factory) -> Path:
    """A published atlas: two layers, channel and diversity renders, scan with pictures and scores."""
    root = tmp_path_factory.mktemp("viewer")
    images = write_images(root / "images", count=12)
    url = root / "atlas"
    summary = run_build(parse_config(viewer_config(str(url), images)), executor="local", progress=False,
                        log=lambda _: None)
    assert summary.published, summary.failed
    return url


@pytest.fixture
def atlas_copy(viewer_atlas, tmp_path) -> Path:
    """A private copy of the atlas a test may damage."""
    copy = tmp_path / "atlas"
    shutil.copytree(viewer_atlas, copy)
    return copy


@contextmanager
def serving(app) -> Iterator[str]:
    """Run `app` under uvicorn on a free loopback port in this process; stop exactly this server."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the viewer did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture
def viewer_url(viewer_atlas) -> Iterator[str]:
    with serving(create_app(str(viewer_atlas))) as base:
        yield base
