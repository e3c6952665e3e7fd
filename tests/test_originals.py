"""Serving originals: headers, 304, HEAD, 404/410/403, and integrity checks on every read."""

from __future__ import annotations

import hashlib
import json
import logging

from tests import images
from tests.conftest import ADMIN, auth
from tests.test_upload_api import blob_files


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


def test_failed_metadata_commit_leaves_no_row_and_an_orphan_blob(
    client, services, data_dir, monkeypatch
):
    from app.metadata import MetadataError

    def boom(*args, **kwargs):
        raise MetadataError("simulated crash before commit")

    monkeypatch.setattr(services.meta, "add_reference", boom)
    data = images.jpeg(seed=77)
    r = client.post("/v1/images", data=data, headers=auth())
    assert r.status_code == 503 and r.json["error"]["code"] == "database_unavailable"
    monkeypatch.undo()
    digest = hashlib.sha256(data).hexdigest()
    assert client.get(f"/v1/objects/{digest}", headers=auth(ADMIN)).status_code == 404
    assert client.get(f"/{digest}/original").status_code == 404
    (orphan,) = blob_files(data_dir)  # left for the reconciler
    assert orphan.read_bytes() == data
    # the next upload of the same bytes works and references the existing blob
    again = client.post("/v1/images", data=data, headers=auth())
    assert again.status_code == 201 and again.json["ref_count"] == 1
