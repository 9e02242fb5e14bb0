"""`loupe view` as users run it: a real process serving on 127.0.0.1, stopped by its PID; an unknown
atlas or version is named before anything is served."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

from loupe.jobs.cli.view import free_port


def test_loupe_view_serves_the_atlas_on_loopback(viewer_atlas):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "loupe", "view", str(viewer_atlas), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240  # a cold start imports torch; slow on a loaded 2-core machine
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/m/r20/layer2/1", timeout=5) as response:
                    page = response.read().decode()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError(f"loupe view did not serve: {process.stdout.read() if process.poll() is not None else ''}")
                time.sleep(0.2)
        assert 'data-unit="1"' in page
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert f"http://127.0.0.1:{port}/" in process.stdout.read()


def test_an_unknown_atlas_or_version_is_named_before_serving(tmp_path, viewer_atlas):
    missing = subprocess.run([sys.executable, "-m", "loupe", "view", str(tmp_path / "nothing-here"), "--port", "0"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "nothing-here" in missing.stderr
    version = subprocess.run([sys.executable, "-m", "loupe", "view", str(viewer_atlas), "--version",
                              "20990101T000000Z-deadbeef"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 2 and "20990101T000000Z-deadbeef" in version.stderr
