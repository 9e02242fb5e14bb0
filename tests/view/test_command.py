"""`loupe view` as users run it: a real process serving on 127.0.0.1, stopped by its PID; an unknown
atlas or version is named before anything is served."""

from __future__ import annotations

import subprocess
import sys
import time
import http.client

from loupe.jobs.cli.view import free_port


def get(port: int, path: str) -> str:
    """GET straight from 127.0.0.1 (http.client: no proxy settings from the environment apply)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        if response.status != 200:
            raise OSError(f"HTTP {response.status}")
        return response.read().decode()
    finally:
        connection.close()


def test_loupe_view_serves_the_atlas_on_loopback(viewer_atlas, tmp_path):
    port = free_port()
    log = tmp_path / "view.log"  # a file, not a pipe: a chatty import can never block the server on a full pipe
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-u", "-m", "loupe", "view", str(viewer_atlas), "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 240  # a cold start imports torch; slow on a loaded 2-core machine
        while True:
            try:
                page = get(port, "/m/r20/layer2/1")
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError(f"loupe view did not serve: {log.read_text()[-3000:]}")
                time.sleep(0.2)
        assert 'data-unit="1"' in page
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert f"http://127.0.0.1:{port}/" in log.read_text()


def test_an_unknown_atlas_or_version_is_named_before_serving(tmp_path, viewer_atlas):
    missing = subprocess.run([sys.executable, "-m", "loupe", "view", str(tmp_path / "nothing-here"), "--port", "0"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "nothing-here" in missing.stderr
    version = subprocess.run([sys.executable, "-m", "loupe", "view", str(viewer_atlas), "--version",
                              "20990101T000000Z-deadbeef"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 2 and "20990101T000000Z-deadbeef" in version.stderr
