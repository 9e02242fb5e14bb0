"""URL resolution, S3 settings and the writable preflight, with errors naming the URL."""

from __future__ import annotations

import json
import os
import socket

import boto3
import pytest
import requests

from tests.storage.atlas_samples import write_small
from loupe.storage import AtlasWriter, StorageError, check_writable, open_atlas
from loupe.storage.urls import resolve, s3_options


def test_s3_defaults_sit_under_user_options():
    opts = s3_options({"config_kwargs": {"retries": {"max_attempts": 3}}, "profile": "research"})
    assert opts["config_kwargs"]["retries"] == {"max_attempts": 3, "mode": "standard"}
    assert opts["config_kwargs"]["request_checksum_calculation"] == "when_required"
    assert opts["config_kwargs"]["response_checksum_validation"] == "when_required"
    assert opts["profile"] == "research" and opts["max_concurrency"] == 1


def test_local_and_file_urls_resolve_to_the_same_folder(tmp_path):
    assert resolve(f"file://{tmp_path}/a").root == resolve(str(tmp_path / "a")).root
    check_writable(str(tmp_path / "new" / "atlas"))
    assert (tmp_path / "new" / "atlas").is_dir()
    assert not [p for p in (tmp_path / "new" / "atlas").iterdir()]  # the probe is cleaned up


@pytest.mark.parametrize("url,fragment", [
    ("nosuchproto://bucket/atlas", "unsupported storage protocol 'nosuchproto'"),
    ("", "non-empty"),
    ("s3:///no-bucket", "names no bucket"),
    ("s3:/bucket/atlas", "malformed scheme"),
])
def test_malformed_urls_are_named(url, fragment):
    with pytest.raises(StorageError, match=fragment) as info:
        check_writable(url)
    assert url in str(info.value) or not url


def test_local_path_that_is_a_file(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("x")
    with pytest.raises(StorageError, match=f"{path}.*not a folder"):
        check_writable(str(path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_local_folder_without_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(StorageError, match=f"{locked}/atlas.*not writable"):
        check_writable(str(locked / "atlas"))


def test_missing_bucket_is_named(s3_endpoint, s3_options):
    with pytest.raises(StorageError, match="s3://no-such-bucket/atlas.*does not exist"):
        check_writable("s3://no-such-bucket/atlas", s3_options)


def test_unreachable_endpoint_is_named():
    with socket.socket() as sock:  # a port on 127.0.0.1 that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}}
    with pytest.raises(StorageError, match="s3://bucket/atlas"):
        check_writable("s3://bucket/atlas", options)


def test_bucket_without_write_permission_is_named(s3_endpoint, s3_bucket):
    """A real IAM denial: a read-only user's key, with moto enforcing IAM policies."""
    iam = boto3.client("iam", endpoint_url=s3_endpoint, region_name="us-east-1")
    iam.create_user(UserName="reader")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"],
         "Resource": [f"arn:aws:s3:::{s3_bucket}", f"arn:aws:s3:::{s3_bucket}/*"]}]}
    iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    options = {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"],
               "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"}}
    previous = requests.post(f"{s3_endpoint}/moto-api/reset-auth", data=b"0", timeout=10).json()
    try:
        with pytest.raises(StorageError, match=f"s3://{s3_bucket}/atlas.*not writable.*permission denied"):
            check_writable(f"s3://{s3_bucket}/atlas", options)
    finally:
        requests.post(f"{s3_endpoint}/moto-api/reset-auth",
                      data=previous["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"].encode(), timeout=10)


def test_endpoint_and_credentials_from_the_aws_environment(s3_endpoint, s3_bucket, monkeypatch):
    """No storage_options at all: botocore's environment chain supplies endpoint and keys."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    url = f"s3://{s3_bucket}/env-atlas"
    check_writable(url)
    writer = AtlasWriter.create(url)
    write_small(writer)
    writer.publish()
    assert open_atlas(url).units("net", "conv1")
