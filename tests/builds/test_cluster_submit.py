"""End to end as on a cluster: `ray start --head` (token auth on), `ray job submit`, read the atlas."""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loupe.storage import open_atlas

from tests.builds.build_helpers import save_config, tiny_config, write_images

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head on 127.0.0.1 with token authentication, stopped (with all its processes) afterwards."""
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the `ray` command is not installed beside this Python")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep a single-node cluster on loopback
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    gcs_port, dashboard_port = free_port(), free_port()
    temp_dir = Path("/tmp") / f"loupe-ray-{secrets.token_hex(3)}"  # short: Ray's socket paths have a length limit
    # Its own session: every process `ray start` leaves behind shares this process group, so the
    # teardown stops exactly this head (`ray stop` would stop every Ray on the machine).
    start = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=2",
         "--disable-usage-stats", f"--temp-dir={temp_dir}",
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    output, _ = start.communicate(timeout=180)
    try:
        assert start.returncode == 0, output
        yield env, f"http://127.0.0.1:{dashboard_port}"
    finally:
        stop_process_group(start.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop_process_group(pgid: int) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def test_ray_job_submit_builds_and_publishes(tmp_path, ray_head):
    env, dashboard = ray_head
    images = write_images(tmp_path / "images", count=8)
    url = str(tmp_path / "atlas")
    config = save_config(tmp_path / "cluster.yaml", tiny_config(url, str(images)))
    started = time.time()
    for _ in range(20):  # right after `ray start` the job agent may not be up yet
        submitted = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", dashboard, "--working-dir", ".", "--",
             "loupe", "build", str(config), "--no-progress"],
            env=env, capture_output=True, text=True, timeout=600, cwd=REPO,
        )
        output = submitted.stdout + submitted.stderr
        if "No available agent to submit job" not in output:
            break
        time.sleep(3)
    assert submitted.returncode == 0, output[-4000:]
    assert "succeeded" in output and "build published" in output
    atlas = open_atlas(url)
    assert atlas.models() == ["r20"]
    assert atlas.render("r20", "layer2", 0).shape == (32, 32, 3)
    assert atlas.examples("r20", "layer2", unit=0).num_rows == 6
    assert time.time() - started < 600
    unauthenticated = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN",)}
    refused = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", dashboard, "--", "python", "-c", "print(1)"],
        env={**unauthenticated, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "no-token")}, capture_output=True,
        text=True, timeout=120, cwd=REPO,
    )
    assert refused.returncode != 0, "the cluster accepted a job without the token"
    assert "token" in (refused.stdout + refused.stderr).lower()
