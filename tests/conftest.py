"""Shared fixtures: the offline ../shared folder and a real S3 API server on 127.0.0.1.

S3 tests talk to moto's ThreadedMotoServer over HTTP (never to an in-process mock), so the
same botocore/s3fs code paths run as against a real bucket. The server is started once per
session and reset before every test that uses it.
"""

from __future__ import annotations

import os
from pathlib import Path

# Busy-waiting OpenMP threads make torch 10-30x slower when another process (a Ray actor, a
# decoding worker) shares the 2 CI cores; passive waiting costs nothing when cores are free.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from typing import TYPE_CHECKING, Iterator

import pytest

if TYPE_CHECKING:
    from tests.s3_faults import FaultyS3

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("LOUPE_SHARED", REPO_ROOT.parent / "shared"))

S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The offline weights and photos beside the project; tests using it skip where it is absent."""
    if not (SHARED_DIR / "models").is_dir() or not (SHARED_DIR / "datasets").is_dir():
        pytest.skip(f"offline data folder {SHARED_DIR} is absent (set LOUPE_SHARED to point at it)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def _moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_endpoint(_moto_server: str) -> Iterator[str]:
    """URL of a freshly reset S3 API server on 127.0.0.1; s3fs caches are cleared around each test."""
    import requests
    import s3fs

    requests.post(f"{_moto_server}/moto-api/reset", timeout=10).raise_for_status()
    s3fs.S3FileSystem.clear_instance_cache()
    yield _moto_server
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_options(s3_endpoint: str) -> dict:
    """fsspec storage_options that point s3fs at the local server."""
    return {
        "key": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "secret": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
    }


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """An empty bucket named 'loupe-test' on the local server; returns its name."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="loupe-test")
    return "loupe-test"


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A real local Ray for one test module, pinned to 127.0.0.1 and shut down after it."""
    import ray

    from loupe.jobs.build.execute import connect_ray

    connect_ray(None, num_cpus=2)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture
def faulty_s3(s3_endpoint: str) -> Iterator["FaultyS3"]:
    """A second S3 endpoint on 127.0.0.1 over the same (freshly reset) moto backend, with injectable
    faults: conditional headers ignored, responses lost after a write, byte ranges mis-served."""
    from tests.s3_faults import FaultyS3

    server = FaultyS3()
    try:
        yield server
    finally:
        server.stop()
