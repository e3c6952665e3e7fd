"""The earlier issues' suites (uploads, hostile input, originals, concurrent uploads, variants
with their Redis/S3 faults, signing), run again unchanged with PostgreSQL as the metadata store.

How: the tests of those modules are collected here a second time, and an autouse fixture
points ``base_env`` (which every ``settings``, ``make_settings``, ``tests.live.gunicorn`` and
subprocess environment goes through) at a fresh PostgreSQL database for each test. The suites
stay where they are and keep running on SQLite there; nothing is copied.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests import (
    images,
    test_concurrent_uploads,
    test_hostile_uploads,
    test_originals,
    test_signing,
    test_upload_api,
    test_variants_backends,
    test_variants_http,
)
from tests.conftest import ADMIN, auth
from tests.multinode.conftest import collect_into, point_base_env_at

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
    point_base_env_at(pg_url, monkeypatch, SUITES)
    return pg_url


def test_these_suites_really_run_on_postgresql(services, _metadata_on_postgres):
    from app.metadata.postgres import PostgresMetadataStore

    assert isinstance(services.meta, PostgresMetadataStore)
    assert services.settings.database_url == _metadata_on_postgres
    assert not (Path(services.settings.data_dir) / "metadata.db").exists()


# --- test_originals' failed-COMMIT tests, in PostgreSQL's terms --------------------------------
def _fail_commits_of(url: str, filename: str) -> None:
    """test_originals.fail_commits_of for PostgreSQL: every transaction that inserts a reference
    named ``filename`` fails at its COMMIT (a deferred foreign key that nothing satisfies)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE commit_guard_parent (id text PRIMARY KEY)")
        db.execute(
            "CREATE TABLE commit_guard (ref_id text REFERENCES commit_guard_parent (id) "
            "DEFERRABLE INITIALLY DEFERRED)"
        )
        db.execute(
            "CREATE FUNCTION commit_guard_fn() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO commit_guard VALUES (NEW.id); RETURN NEW; END $$"
        )
        db.execute(
            "CREATE TRIGGER commit_guard_on_refs AFTER INSERT ON refs FOR EACH ROW "
            f"WHEN (NEW.original_filename = '{filename}') EXECUTE FUNCTION commit_guard_fn()"
        )


def _committed_rows(url: str, digest: str) -> tuple[int, int]:
    import psycopg

    with psycopg.connect(url) as db:
        objects = db.execute("SELECT count(*) FROM objects WHERE hash = %s", (digest,)).fetchone()
        refs = db.execute("SELECT count(*) FROM refs WHERE hash = %s", (digest,)).fetchone()
    assert objects is not None and refs is not None
    return objects[0], refs[0]


def test_failed_metadata_commit_leaves_no_row_and_an_orphan_blob_on_postgresql(
    client, services, data_dir, _metadata_on_postgres
):
    _fail_commits_of(_metadata_on_postgres, test_originals.FAILING_NAME)
    data = images.jpeg(seed=77)
    digest = hashlib.sha256(data).hexdigest()
    r = test_originals.upload_named(client, data, test_originals.FAILING_NAME)
    assert r.status_code == 503, (r.status_code, r.get_data(as_text=True)[:300])
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json["error"]["code"] == "database_unavailable"
    assert _committed_rows(_metadata_on_postgres, digest) == (0, 0)
    (orphan,) = test_upload_api.blob_files(data_dir)
    assert orphan.read_bytes() == data
    assert test_upload_api.staging_files(data_dir) == []


def test_after_a_failed_commit_the_upload_is_503_and_the_next_one_works_on_postgresql(
    client, services, _metadata_on_postgres
):
    _fail_commits_of(_metadata_on_postgres, test_originals.FAILING_NAME)
    data = images.jpeg(seed=78)
    digest = hashlib.sha256(data).hexdigest()
    r = test_originals.upload_named(client, data, test_originals.FAILING_NAME)
    assert r.status_code == 503 and r.json["error"]["code"] == "database_unavailable"
    assert client.get(f"/v1/objects/{digest}", headers=auth(ADMIN)).status_code == 404
    assert client.get(f"/{digest}/original").status_code == 404
    again = test_originals.upload_named(client, data, "fine.jpg")
    assert again.status_code == 201 and again.json["ref_count"] == 1
    assert again.json["deduplicated"] is True


# Not collected here, each with its reason.
_SQLITE_COMMIT = (
    "forces a failed COMMIT with a SQLite trigger on services.meta.path (metadata.db); "
    "its PostgreSQL twin is the *_on_postgresql test above"
)
EXCLUDED: dict[str, str] = {
    "test_failed_metadata_commit_leaves_no_row_and_an_orphan_blob": _SQLITE_COMMIT,
    "test_after_a_failed_commit_the_upload_is_503_and_the_next_one_works": _SQLITE_COMMIT,
}

collect_into(globals(), SUITES, EXCLUDED)
