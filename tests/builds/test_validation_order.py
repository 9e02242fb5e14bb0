"""Validation order: a typo in a layer or unit is reported before storage is touched or data listed,
and a rerun with every item already done never starts Ray."""

from __future__ import annotations

import os

import pytest

from loupe.jobs.build import run as build_module
from loupe.jobs.build import run_build
from loupe.jobs.build.config import parse_config
from loupe.pipeline.errors import LoupeError
from loupe.storage import AtlasWriter, list_versions, open_atlas

from tests.builds.build_helpers import tiny_config, write_images


@pytest.mark.parametrize("field, value, named", [
    ("units", "0-3,9999", "9999"),
    ("layers", ["layer1.0.bn1", "layer2.9.conv1"], "layer2.9.conv1"),
])
def test_a_typo_is_named_before_storage_or_data_are_touched(tmp_path, field, value, named):
    atlas = tmp_path / "fresh" / "atlas"
    config = tiny_config(str(atlas), str(tmp_path / "no-such-dataset"))  # listing it would fail first
    config["models"][0][field] = value
    with pytest.raises(LoupeError, match=named.replace(".", r"\.")):
        run_build(parse_config(config), executor="local", progress=False, log=lambda _: None)
    assert not (tmp_path / "fresh").exists()


def test_a_resumed_draft_with_every_item_done_publishes_without_starting_ray(tmp_path, monkeypatch):
    url = str(tmp_path / "atlas")
    images = write_images(tmp_path / "images", count=6)
    config = parse_config(tiny_config(url, str(images)))

    def stop_before_sealing(self, expected_items=None):
        raise KeyboardInterrupt("driver stopped after its last item, before sealing")

    with monkeypatch.context() as patch:
        patch.setattr(AtlasWriter, "publish", stop_before_sealing)
        with pytest.raises(KeyboardInterrupt):
            run_build(config, executor="local", progress=False, log=lambda _: None)
    [draft] = list_versions(url)
    assert draft.status == "building"

    def no_ray(address=None, **kwargs):
        raise AssertionError("Ray was started although every item was done")

    monkeypatch.setattr(build_module.execute, "connect_ray", no_ray)
    summary = run_build(config, executor="ray", progress=False, log=lambda _: None)
    assert summary.published and summary.version == draft.version
    assert summary.done == 0 and summary.already_done == summary.planned
    assert open_atlas(url).version == draft.version
    import ray

    assert not ray.is_initialized()
    assert os.path.exists(url)
