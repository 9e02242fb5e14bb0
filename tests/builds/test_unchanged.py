"""'Nothing changed' is decided on item keys and code version: settings that change no output
(resources) publish nothing and copy nothing."""

from __future__ import annotations

from pathlib import Path

from loupe.jobs.build import run_build
from loupe.jobs.build.config import parse_config
from loupe.storage import list_versions, open_atlas

from tests.builds.build_helpers import tiny_config


def _build(config: dict, logs: list[str] | None = None):
    sink = logs.append if logs is not None else (lambda _: None)
    return run_build(parse_config(config), executor="local", progress=False, log=sink)


def test_changing_only_resources_publishes_nothing_and_copies_nothing(tmp_path):
    url = str(tmp_path / "atlas")
    config = tiny_config(url, None)
    first = _build(config)
    assert first.published
    pointer = (Path(url) / "atlas.json").read_bytes()
    files_before = sorted(p.relative_to(url) for p in Path(url).rglob("*") if p.is_file())

    config["resources"] = {"cpus_per_actor": 2, "max_retries": 5}
    logs: list[str] = []
    again = _build(config, logs)
    assert again.unchanged and not again.published and again.version == first.version
    assert again.done == 0 and again.reused == again.planned and again.units_rendered == 0
    assert len(list_versions(url)) == 1
    assert (Path(url) / "atlas.json").read_bytes() == pointer
    assert sorted(p.relative_to(url) for p in Path(url).rglob("*") if p.is_file()) == files_before
    assert any("item keys and code version" in line for line in logs)
    assert open_atlas(url).verify() > 0


def test_changing_a_render_setting_is_not_unchanged(tmp_path):
    url = str(tmp_path / "atlas")
    config = tiny_config(url, None)
    _build(config)
    config["render"]["channel"]["steps"] = 4
    summary = _build(config)
    assert summary.published and not summary.unchanged and summary.done == 4
    assert len(list_versions(url)) == 2
