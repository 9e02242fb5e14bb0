"""Two builds of one config, a kill between seal and pointer swap, and a draft deleted mid-build.

A second build of a config whose draft a live build holds stops before any compute and names the
holder; the first build publishes alone, and every reader's checksum chain stays intact.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loupe.jobs.build import run_build
from loupe.jobs.build.config import parse_config
from loupe.storage import LeaseHeldError, LeaseLostError, layout, list_versions, open_atlas, publish
from loupe.storage.objects import ObjectStore
from loupe.storage.urls import resolve

from tests.builds.build_helpers import save_config, tiny_config

REPO = Path(__file__).resolve().parents[2]


def _build(config: dict, **kwargs):
    return run_build(parse_config(config), executor="local", progress=False, log=lambda _: None, **kwargs)


def _slow_config(url: str, options: dict | None) -> dict:
    config = tiny_config(url, None)
    config["render"] = {"channel": {"size": 32, "steps": 30, "units_per_item": 1}}
    config["models"][0]["units"] = "0-7"
    if options:
        config["atlas"]["storage_options"] = options
    return config


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_second_build_of_a_running_config_refuses_and_names_the_holder(tmp_path, kind, request):
    if kind == "s3":
        bucket, options = request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_options")
        url = f"s3://{bucket}/atlases/concurrent"
    else:
        url, options = str(tmp_path / "atlas"), None
    config = _slow_config(url, options)
    store = ObjectStore(resolve(url, options))
    first = subprocess.Popen(
        [sys.executable, "-m", "loupe", "build", str(save_config(tmp_path / "b.yaml", config)),
         "--executor", "local", "--no-progress"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.time() + 120
        while not [p for p in store.list_files(layout.VERSIONS) if p.endswith("/lease.json")]:
            assert first.poll() is None, first.communicate()[0]
            assert time.time() < deadline, "the first build never took its draft's lease"
            time.sleep(0.1)
        with pytest.raises(LeaseHeldError, match=rf"being built by another build: host \S+ pid {first.pid} "):
            _build(config)
        assert first.poll() is None, "the first build ended before the second one checked (make it slower)"
        output, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, output
    [version] = list_versions(url, options)
    assert version.status == "current"
    assert open_atlas(url, storage_options=options).verify() > 0
    assert not [p for p in store.list_files("") if p.endswith(".tmp") or p.endswith("lease.json")]
    again = _build(config)
    assert again.unchanged and again.version == version.version


def test_a_build_stopped_between_seal_and_swap_is_published_as_sealed(tmp_path, monkeypatch):
    url = str(tmp_path / "atlas")
    config = tiny_config(url, None)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt("driver stopped after sealing, before the pointer swap")

    with monkeypatch.context() as patch:
        patch.setattr(publish, "swap_pointer", stopped)
        with pytest.raises(KeyboardInterrupt):
            _build(config)
    [sealed] = list_versions(url)
    assert sealed.status == "complete"
    manifest_path = Path(url) / layout.manifest(sealed.version)
    sealed_bytes = manifest_path.read_bytes()
    rerun = _build(config)
    assert rerun.published and rerun.version == sealed.version and rerun.done == rerun.reused == 0
    assert manifest_path.read_bytes() == sealed_bytes  # sealed once, never rewritten
    pointer = publish.read_pointer(ObjectStore(resolve(url)))
    assert pointer["manifest_sha256"] == hashlib.sha256(sealed_bytes).hexdigest()
    assert [v.status for v in list_versions(url)] == ["current"]
    assert open_atlas(url).verify() > 0
    assert not list(Path(url).rglob("*.tmp"))


def test_a_build_whose_draft_is_deleted_says_so(tmp_path, monkeypatch):
    from loupe.jobs.build.runner import ItemRunner

    url = str(tmp_path / "atlas")
    original = ItemRunner._render
    deleted = []

    def prune_midway(self, item):
        if not deleted:
            ObjectStore(resolve(url)).delete_tree(layout.version_dir(self.writer.version))
            deleted.append(self.writer.version)
        return original(self, item)

    monkeypatch.setattr(ItemRunner, "_render", prune_midway)
    with pytest.raises(LeaseLostError, match="vanished from under this build"):
        _build(tiny_config(url, None))
    assert deleted and not (Path(url) / "atlas.json").exists()
