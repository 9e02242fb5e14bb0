"""The build on a real local Ray: same atlas as in-process, and it survives killed actors and drivers."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


from loupe.jobs.build import run_build
from loupe.jobs.build.config import parse_config
from loupe.storage import list_versions

from tests.builds.build_helpers import atlas_snapshot, save_config, tiny_config, write_images

REPO = Path(__file__).resolve().parents[2]


def build(config_dict, executor):
    return run_build(parse_config(config_dict), executor=executor, progress=False, log=lambda _: None)


def item_runner_pids(busy_only: bool) -> list[int]:
    """Processes of Ray actors running ItemRunner (process titles `ray::ItemRunner[.method]`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::ItemRunner") and (not busy_only or title.startswith("ray::ItemRunner.run")):
            pids.append(int(entry.name))
    return pids


def test_ray_build_equals_in_process_build(tmp_path, local_ray):
    images = write_images(tmp_path / "images", count=10)
    ray_url, local_url = str(tmp_path / "on-ray"), str(tmp_path / "in-process")
    summary = build(tiny_config(ray_url, str(images)), "ray")
    assert summary.published and summary.done == summary.planned
    build(tiny_config(local_url, str(images)), "local")
    assert atlas_snapshot(ray_url) == atlas_snapshot(local_url)


def test_actor_killed_mid_item_still_completes_the_build(tmp_path, local_ray):
    url = str(tmp_path / "atlas")
    config = tiny_config(url, None)
    config["render"] = {"channel": {"size": 32, "steps": 120, "units_per_item": 2}}
    config["models"][0]["units"] = "0-7"
    killed = []

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for pid in item_runner_pids(busy_only=True):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    summary = build(config, "ray")
    thread.join(timeout=1)
    assert killed, "no busy actor process was found to kill"
    assert summary.published and not summary.failed
    reference = tiny_config(str(tmp_path / "reference"), None)
    reference["render"], reference["models"][0]["units"] = config["render"], "0-7"
    build(reference, "ray")  # same executor, so the same thread count and bit-identical arithmetic
    got, expected = atlas_snapshot(url), atlas_snapshot(str(tmp_path / "reference"))
    assert got.keys() == expected.keys()
    assert [key for key in got if got[key] != expected[key]] == []


def test_killed_driver_rerun_redoes_only_unfinished_items(tmp_path):
    url = tmp_path / "atlas"
    config = tiny_config(str(url), None)
    config["render"] = {"channel": {"size": 32, "steps": 40, "units_per_item": 1}}
    config["models"][0]["units"] = "0-7"
    path = save_config(tmp_path / "build.yaml", config)
    driver = subprocess.Popen(
        [sys.executable, "-m", "loupe", "build", str(path), "--executor", "local", "--no-progress"],
        cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 240
        finished = []
        while time.time() < deadline:
            finished = list(url.glob("versions/*/items/*.json"))
            if len(finished) >= 3:
                break
            assert driver.poll() is None, "the build ended before it could be interrupted"
            time.sleep(0.1)
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        driver.wait(timeout=30)
    done_before = len(list(url.glob("versions/*/items/*.json")))
    assert 3 <= done_before < 16
    assert [v.status for v in list_versions(str(url))] == ["building"]
    summary = build(config, "local")
    assert summary.published
    assert summary.already_done == done_before
    assert summary.done == summary.planned - done_before
    reference_url = str(tmp_path / "reference")
    config["atlas"]["url"] = reference_url
    build(config, "local")
    assert atlas_snapshot(str(url)) == atlas_snapshot(reference_url)
