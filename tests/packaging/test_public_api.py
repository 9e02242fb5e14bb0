"""`loupe` is the one import root: its public names resolve lazily, so light imports stay light,
and `loupe.build` publishes an atlas that `loupe.open_atlas` reads."""

from __future__ import annotations

import subprocess
import sys
import types
from importlib.metadata import version
from pathlib import Path

import numpy as np

import loupe
from tests.builds.build_helpers import tiny_config, write_images
from tests.packaging.import_probe import run_script

HEAVY = ("torch", "torchvision", "ray")
MODULE_EXPORTS = {"objectives", "param", "transforms"}


def imported_after(statement: str, cwd: Path) -> list[str]:
    return run_script(
        f"import json, sys\n{statement}\nprint(json.dumps(sorted(n for n in {HEAVY!r} if n in sys.modules)))\n", cwd=cwd
    )


def test_import_loupe_imports_neither_torch_nor_ray(tmp_path: Path) -> None:
    assert imported_after("import loupe", tmp_path) == []


def test_import_loupe_storage_and_open_atlas_do_not_import_torch(tmp_path: Path) -> None:
    assert imported_after("import loupe.storage\nfrom loupe import open_atlas", tmp_path) == []


def test_the_issue_one_liner_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import loupe; loupe.open_atlas; loupe.render_vis"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr


def test_every_public_name_resolves_and_is_listed() -> None:
    assert set(loupe.__all__) == {
        "load_model", "capture", "render_vis", "render_units", "objectives", "param", "transforms", "open_atlas", "build",
        "__version__",
    }
    for name in loupe.__all__:
        value = getattr(loupe, name)
        if name == "__version__":
            assert value == version("loupe-atlas")
        elif name in MODULE_EXPORTS:
            assert isinstance(value, types.ModuleType) and value.__name__ == f"loupe.pipeline.featurevis.{name}"
        else:
            assert callable(value) and value.__module__.startswith("loupe."), name
    assert set(loupe.__all__) <= set(dir(loupe))


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    try:
        loupe.render_everything  # noqa: B018
    except AttributeError as exc:
        assert "render_everything" in str(exc)
    else:
        raise AssertionError("loupe.render_everything resolved")


def test_loupe_build_publishes_an_atlas_loupe_open_atlas_reads(tmp_path: Path) -> None:
    images = write_images(tmp_path / "images", count=6)
    url = str(tmp_path / "atlas")
    config = tiny_config(url, str(images))
    config["scan"]["shards"] = 1
    summary = loupe.build(config, executor="local", progress=False)
    assert summary.published and not summary.failed
    atlas = loupe.open_atlas(url)
    assert atlas.models() == ["r20"]
    assert sorted(atlas.layers("r20")) == ["layer1.0.bn1", "layer2"]
    render = atlas.render("r20", "layer2", 3)
    assert render.shape == (32, 32, 3) and render.dtype == np.uint8
    assert atlas.examples("r20", "layer2", unit=1).num_rows == 2 * 3
