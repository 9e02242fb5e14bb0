"""Fixtures for the atlas store tests: every store test runs on a local folder and on S3 (moto)."""

from __future__ import annotations

import pytest

from tests.storage.atlas_samples import Target


@pytest.fixture(params=["local", "s3"])
def target(request, tmp_path) -> Target:
    if request.param == "local":
        return Target("local", str(tmp_path / "atlas"), None)
    bucket = request.getfixturevalue("s3_bucket")
    options = request.getfixturevalue("s3_options")
    return Target("s3", f"s3://{bucket}/atlases/demo", options)

