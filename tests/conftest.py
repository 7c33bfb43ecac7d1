"""Shared fixtures: storage backends (moto S3 and a local directory) and small datasets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cosmicai.storage import LocalStorage, S3Storage, Storage
from harness.data import BUCKET


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # moto needs credentials to sign requests; make sure no real account is ever reached.
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def s3_client(aws_env: None) -> Iterator[Any]:
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def s3_storage(s3_client: Any) -> S3Storage:
    return S3Storage(s3_client)


@pytest.fixture
def local_storage(tmp_path: Path) -> LocalStorage:
    (tmp_path / "store" / BUCKET).mkdir(parents=True)
    return LocalStorage(tmp_path / "store")


@pytest.fixture(params=["s3", "local"])
def storage(request: pytest.FixtureRequest) -> Storage:
    """Each test using this runs once against moto S3 and once against a local directory."""
    name = "s3_storage" if request.param == "s3" else "local_storage"
    backend: Storage = request.getfixturevalue(name)
    return backend
