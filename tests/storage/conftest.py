"""Fixtures for the storage tests: one ``store`` fixture over every backend.

S3 runs against the real SeaweedFS of the session-scoped ``seaweed`` fixture (tests/conftest.py,
started once per run and only when asked for); each test gets a fresh bucket that is emptied and
deleted afterwards (SeaweedFS keeps a volume per bucket, so buckets must not pile up).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.storage.local import LocalBlobStore
from app.storage.s3 import S3BlobStore, make_client
from tests import servers

BACKENDS = ["local", "s3"]


def new_bucket_name() -> str:
    return f"t-{uuid.uuid4().hex[:24]}"  # S3 bucket names: 3-63 chars, lowercase


@pytest.fixture
def make_s3_store(seaweed: servers.SeaweedFS) -> Callable[..., S3BlobStore]:
    """Build an S3BlobStore on the session's SeaweedFS with explicit dummy credentials
    (so boto3 never looks further, e.g. at an instance metadata address)."""

    def make(bucket: str, **kwargs: Any) -> S3BlobStore:
        client = make_client(
            seaweed.endpoint_url,
            seaweed.region,
            access_key=seaweed.access_key,
            secret_key=seaweed.secret_key,
        )
        return S3BlobStore(bucket, endpoint_url=seaweed.endpoint_url, client=client, **kwargs)

    return make


@pytest.fixture
def s3_bucket(seaweed: servers.SeaweedFS) -> Iterator[str]:
    bucket = seaweed.create_bucket(new_bucket_name())
    yield bucket
    seaweed.delete_bucket(bucket)


@pytest.fixture
def s3_store(make_s3_store: Callable[..., S3BlobStore], s3_bucket: str) -> S3BlobStore:
    return make_s3_store(s3_bucket)


@pytest.fixture
def local_store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs", cold_root=tmp_path / "cold")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> LocalBlobStore | S3BlobStore:
    """Each contract test runs once per backend; S3 starts SeaweedFS only when selected."""
    return request.getfixturevalue(f"{request.param}_store")
