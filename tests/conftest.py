"""Shared fixtures: settings in a temp data dir, the Flask app and client, API keys."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import create_app
from app.settings import Settings, load

ALICE = "alice-key-0123456789"
BOB = "bob-key-0123456789ab"
ADMIN = "admin-key-0123456789"
SIGNING = "signing-secret-0123456789abcdef"
API_KEYS = f"alice:{ALICE},bob:{BOB},ops:{ADMIN}:admin"


def auth(key: str = ALICE) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def base_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        "IMAGE_ORIGIN_DATA_DIR": str(data_dir),
        "IMAGE_ORIGIN_API_KEYS": API_KEYS,
        "IMAGE_ORIGIN_SIGNING_KEYS": SIGNING,
        "IMAGE_ORIGIN_PREGENERATE": "",
        "IMAGE_ORIGIN_LOG_LEVEL": "WARNING",
    }
    env.update(extra)
    return env


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    return load(base_env(data_dir), **overrides)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return make_settings(data_dir)


@pytest.fixture
def app(settings: Settings) -> Iterator:
    application = create_app(settings)
    application.config["TESTING"] = True
    yield application
    application.config["IMAGE_ORIGIN"].close()


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture
def services(app):  # type: ignore[no-untyped-def]
    return app.config["IMAGE_ORIGIN"]


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


# --- real servers, one per session, started only when a test asks for them -------------------
@pytest.fixture(scope="session")
def redis_srv():  # type: ignore[no-untyped-def]
    from tests import servers

    with servers.redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def seaweed():  # type: ignore[no-untyped-def]
    from tests import servers

    with servers.seaweedfs() as server:
        yield server


@pytest.fixture
def redis_url(redis_srv) -> str:  # type: ignore[no-untyped-def]
    """A running Redis, emptied before the test (it may have been stopped by another test)."""
    import redis

    redis_srv.start()
    redis.Redis.from_url(redis_srv.url).flushall()
    return redis_srv.url


@pytest.fixture
def s3_env(seaweed) -> Iterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    """Settings for an S3 store on the session's SeaweedFS, in a fresh bucket."""
    import uuid

    bucket = seaweed.create_bucket(f"io-{uuid.uuid4().hex[:20]}")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", seaweed.access_key)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    yield {
        "IMAGE_ORIGIN_STORAGE_URL": f"s3://{bucket}/objects",
        "IMAGE_ORIGIN_S3_ENDPOINT_URL": seaweed.endpoint_url,
    }
    seaweed.delete_bucket(bucket)
