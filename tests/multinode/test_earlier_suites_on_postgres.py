"""The earlier issues' suites (uploads, hostile input, originals, concurrent uploads, variants
with their Redis/S3 faults, signing), run again unchanged with PostgreSQL as the metadata store.

How: the tests of those modules are collected here a second time, and an autouse fixture
points ``base_env`` (which every ``settings``, ``make_settings``, ``tests.live.gunicorn`` and
subprocess environment goes through) at a fresh PostgreSQL database for each test. The suites
stay where they are and keep running on SQLite there; nothing is copied.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests import (
    conftest,
    live,
    test_concurrent_uploads,
    test_hostile_uploads,
    test_originals,
    test_signing,
    test_upload_api,
    test_variants_backends,
    test_variants_http,
)

SUITES = (
    test_hostile_uploads,
    test_upload_api,
    test_originals,
    test_concurrent_uploads,
    test_variants_http,
    test_variants_backends,
    test_signing,
)


@pytest.fixture(autouse=True)
def _metadata_on_postgres(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    original: Callable[..., dict[str, str]] = conftest.base_env

    def base_env(data_dir: Path, **extra: str) -> dict[str, str]:
        return original(data_dir, **{"IMAGE_ORIGIN_DATABASE_URL": pg_url, **extra})

    # Every module that imported base_env by name, and conftest itself (make_settings).
    for module in (conftest, live, *SUITES):
        if getattr(module, "base_env", None) is original:
            monkeypatch.setattr(module, "base_env", base_env)
    return pg_url


def test_these_suites_really_run_on_postgresql(services, _metadata_on_postgres):
    from app.metadata.postgres import PostgresMetadataStore

    assert isinstance(services.meta, PostgresMetadataStore)
    assert services.settings.database_url == _metadata_on_postgres
    assert not (Path(services.settings.data_dir) / "metadata.db").exists()


# Not collected here, each with its reason (none at present).
EXCLUDED: dict[str, str] = {}


def _is_fixture(obj: object) -> bool:
    return hasattr(obj, "_fixture_function_marker") or hasattr(obj, "_pytestfixturefunction")


for _suite in SUITES:
    for _name, _obj in vars(_suite).items():
        if _name.startswith("test_") and callable(_obj) and _name not in EXCLUDED:
            assert _name not in globals(), f"{_name} is in two suites; rename one"
            globals()[_name] = _obj
        elif _is_fixture(_obj):  # a suite's own fixtures (e.g. private_image)
            assert globals().get(_name, _obj) is _obj, f"fixture {_name} is in two suites"
            globals()[_name] = _obj
