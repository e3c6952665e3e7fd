"""Serving originals: headers, 304, HEAD, 404/410/403, and integrity checks on every read."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from contextlib import closing

import pytest

from tests import images
from tests.conftest import ADMIN, auth
from tests.test_upload_api import blob_files, staging_files


def test_original_served_with_immutable_headers(client):
    data = images.jpeg(33, 21, seed=5)
    doc = client.post("/v1/images", data=data, headers=auth()).json
    r = client.get(f"/{doc['hash']}/original")
    assert r.status_code == 200
    assert r.data == data
    assert r.headers["Content-Type"] == "image/jpeg"
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["ETag"] == f'"{doc["hash"]}"'
    assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    head = client.head(f"/{doc['hash']}/original")
    assert head.status_code == 200 and head.data == b""
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["ETag"] == r.headers["ETag"]
    cached = client.get(f"/{doc['hash']}/original", headers={"If-None-Match": r.headers["ETag"]})
    assert cached.status_code == 304 and cached.data == b""
    other = client.get(f"/{doc['hash']}/original", headers={"If-None-Match": '"nope"'})
    assert other.status_code == 200


def test_unknown_and_malformed_hashes(client):
    assert client.get(f"/{'a' * 64}/original").status_code == 404
    for bad in ("A" * 64, "a" * 63, "g" * 64, "..", "%2e%2e"):
        r = client.get(f"/{bad}/original")
        assert r.status_code == 404, bad
        assert r.json["error"]["code"] == "not_found"


def test_all_references_deleted_is_410_then_restore_serves_again(client):
    data = images.png(10, 10)
    a = client.post("/v1/images", data=data, headers=auth()).json
    b = client.post("/v1/images", data=data, headers=auth()).json
    client.delete(f"/v1/images/{a['id']}", headers=auth())
    assert client.get(f"/{a['hash']}/original").status_code == 200
    client.delete(f"/v1/images/{b['id']}", headers=auth())
    gone = client.get(f"/{a['hash']}/original")
    assert gone.status_code == 410 and gone.json["error"]["code"] == "gone"
    assert client.head(f"/{a['hash']}/original").status_code == 410
    client.post(f"/v1/images/{b['id']}/restore", headers=auth())
    assert client.get(f"/{a['hash']}/original").data == data


def test_private_content_is_403_and_public_reference_makes_it_public(client):
    data = images.webp(seed=9)
    priv = client.post("/v1/images?private=true", data=data, headers=auth()).json
    r = client.get(f"/{priv['hash']}/original")
    assert r.status_code == 403 and r.json["error"]["code"] == "private"
    pub = client.post("/v1/images", data=data, headers=auth()).json
    assert client.get(f"/{priv['hash']}/original").status_code == 200
    client.delete(f"/v1/images/{pub['id']}", headers=auth())
    assert client.get(f"/{priv['hash']}/original").status_code == 403


def test_flipped_byte_is_never_served(client, services, data_dir, caplog):
    data = images.jpeg(64, 64, seed=21)
    doc = client.post("/v1/images", data=data, headers=auth()).json
    (blob,) = blob_files(data_dir)
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    blob.write_bytes(bytes(raw))
    from app import metrics

    before = metrics.INTEGRITY_FAILURES._value.get()
    with caplog.at_level(logging.ERROR, logger="image_origin"):
        r = client.get(f"/{doc['hash']}/original")
    assert r.status_code == 500
    assert r.json["error"]["code"] == "integrity_failure"
    assert bytes(raw) not in r.data and data not in r.data
    assert metrics.INTEGRITY_FAILURES._value.get() == before + 1
    events = [json.loads(rec.getMessage()) for rec in caplog.records]
    failure = [e for e in events if e["event"] == "storage_integrity_failure"]
    assert failure and failure[0]["expected"] == doc["hash"]
    assert failure[0]["actual"] == hashlib.sha256(bytes(raw)).hexdigest()
    assert failure[0]["key"] == f"sha256:{doc['hash']}"
    obj = client.get(f"/v1/objects/{doc['hash']}", headers=auth(ADMIN)).json
    assert obj["integrity_failed_at"] is not None
    # marked: never served again, even if the bytes were put back by someone
    blob.write_bytes(data)
    assert client.get(f"/{doc['hash']}/original").status_code == 500


@pytest.mark.parametrize("damage", ["longer", "shorter"])
def test_a_blob_of_another_length_is_never_served_or_transformed(client, data_dir, damage):
    """Bytes added to or cut from a stored original: the hash check catches it on every read,
    and the actual hash reported is that of the whole blob as stored."""
    data = images.jpeg(64, 64, seed=22 if damage == "longer" else 23)
    doc = client.post("/v1/images", data=data, headers=auth()).json
    (blob,) = blob_files(data_dir)
    damaged = data + b"\0" * 5000 if damage == "longer" else data[:-100]
    blob.write_bytes(damaged)
    for path in ("original", "webp/high/160"):
        r = client.get(f"/{doc['hash']}/{path}")
        assert r.status_code == 500 and r.json["error"]["code"] == "integrity_failure", path
        assert damaged not in r.data and data not in r.data


FAILING_NAME = "commit-fails.jpg"


def fail_commits_of(db_path: str, filename: str) -> None:
    """In this test's database only: every transaction that inserts a reference named
    ``filename`` fails at its COMMIT, after all its statements ran. A trigger adds a row with a
    deferred foreign key that nothing satisfies, and SQLite checks deferred keys at COMMIT."""
    with closing(sqlite3.connect(db_path)) as db:
        db.executescript(
            f"""
            CREATE TABLE commit_guard_parent (id TEXT PRIMARY KEY);
            CREATE TABLE commit_guard (
                ref_id TEXT REFERENCES commit_guard_parent (id) DEFERRABLE INITIALLY DEFERRED
            );
            CREATE TRIGGER commit_guard_on_refs AFTER INSERT ON refs
            WHEN NEW.original_filename = '{filename}'
            BEGIN INSERT INTO commit_guard VALUES (NEW.id); END;
            """
        )


def committed_rows(db_path: str, digest: str) -> tuple[int, int]:
    """(object rows, reference rows) for ``digest``, read on a connection of its own: what every
    other thread, worker and node sees."""
    with closing(sqlite3.connect(db_path)) as db:
        objects = db.execute("SELECT count(*) FROM objects WHERE hash = ?", (digest,)).fetchone()
        refs = db.execute("SELECT count(*) FROM refs WHERE hash = ?", (digest,)).fetchone()
    return objects[0], refs[0]


def upload_named(client, data: bytes, filename: str):  # type: ignore[no-untyped-def]
    return client.post("/v1/images", data=data, headers={**auth(), "X-Filename": filename})


def test_failed_metadata_commit_leaves_no_row_and_an_orphan_blob(client, services, data_dir):
    """A real COMMIT fails inside the metadata transaction (not a stubbed add_reference): the
    upload is a JSON 5xx, nothing is committed, and the blob written before the commit stays
    for reconcile; staging is empty."""
    fail_commits_of(services.meta.path, FAILING_NAME)
    data = images.jpeg(seed=77)
    digest = hashlib.sha256(data).hexdigest()
    r = upload_named(client, data, FAILING_NAME)
    assert r.status_code == 503, (r.status_code, r.get_data(as_text=True)[:300])
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json["error"]["code"] == "database_unavailable"
    assert committed_rows(services.meta.path, digest) == (0, 0)
    (orphan,) = blob_files(data_dir)  # written before the commit; left for the reconciler
    assert orphan.read_bytes() == data
    assert staging_files(data_dir) == []


def test_after_a_failed_commit_the_upload_is_503_and_the_next_one_works(client, services):
    fail_commits_of(services.meta.path, FAILING_NAME)
    data = images.jpeg(seed=78)
    digest = hashlib.sha256(data).hexdigest()
    r = upload_named(client, data, FAILING_NAME)
    assert r.status_code == 503 and r.json["error"]["code"] == "database_unavailable"
    # the app's own connection sees what was committed: nothing
    assert client.get(f"/v1/objects/{digest}", headers=auth(ADMIN)).status_code == 404
    assert client.get(f"/{digest}/original").status_code == 404
    # the next upload of the same bytes works and references the existing (orphan) blob
    again = upload_named(client, data, "fine.jpg")
    assert again.status_code == 201 and again.json["ref_count"] == 1
    assert again.json["deduplicated"] is True
