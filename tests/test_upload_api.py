"""Upload, dedup, references, delete and restore through the HTTP API (real SQLite, disk)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from tests import images
from tests.conftest import ADMIN, BOB, auth


def upload(client, data: bytes, key: str = "alice-key-0123456789", **form):  # type: ignore[no-untyped-def]
    fields = {
        "file": (io.BytesIO(data), form.pop("filename", "cat.jpg"), form.pop("ctype", "image/jpeg"))
    }
    fields.update({k: str(v) for k, v in form.items()})
    return client.post(
        "/v1/images", data=fields, headers=auth(key), content_type="multipart/form-data"
    )


def blob_files(data_dir: Path) -> list[Path]:
    root = data_dir / "blobs" / "sha256"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def staging_files(data_dir: Path) -> list[Path]:
    d = data_dir / "staging"
    return list(d.iterdir()) if d.exists() else []


def test_upload_returns_reference_document(client, data_dir):
    data = images.jpeg(120, 80)
    r = upload(client, data, filename="cat.jpg")
    assert r.status_code == 201, r.json
    doc = r.json
    digest = hashlib.sha256(data).hexdigest()
    assert doc["hash"] == digest
    assert doc["storage_key"] == f"sha256:{digest}"
    assert doc["owner"] == "alice"
    assert doc["original_filename"] == "cat.jpg"
    assert doc["mime_type"] == "image/jpeg"
    assert (doc["size"], doc["width"], doc["height"]) == (len(data), 120, 80)
    assert doc["private"] is False
    assert doc["ref_count"] == 1
    assert doc["deduplicated"] is False
    assert doc["created_at"].endswith("Z")
    assert doc["urls"]["original"] == f"http://localhost/{digest}/original"
    assert doc["urls"]["webp"] == f"http://localhost/{digest}/webp/high"
    assert set(doc["urls"]) == {"original", "jpeg", "webp", "avif"}
    assert doc["srcset"]["webp"] == f"http://localhost/{digest}/webp/high/160 160w"
    assert r.headers["Location"] == f"/v1/images/{doc['id']}"
    got = client.get(r.headers["Location"], headers=auth())
    assert got.status_code == 200
    assert got.json["id"] == doc["id"] and got.json["hash"] == digest
    # the local store keeps the original as one file holding exactly its bytes
    (blob,) = blob_files(data_dir)
    assert blob.read_bytes() == data
    assert (
        blob.relative_to(data_dir / "blobs").as_posix()
        == f"sha256/{digest[:2]}/{digest[2:4]}/{digest}"
    )
    assert staging_files(data_dir) == []


def test_raw_body_upload_with_filename_header_and_private_flag(client):
    data = images.png(30, 20)
    r = client.post(
        "/v1/images?private=true",
        data=data,
        headers={**auth(), "X-Filename": "dir/../secret.png", "Content-Type": "text/plain"},
    )
    assert r.status_code == 201, r.json
    assert r.json["mime_type"] == "image/png"
    assert r.json["private"] is True
    assert r.json["original_filename"] == "secret.png"


def test_dedup_across_owners_filenames_and_claimed_types(client, data_dir):
    data = images.jpeg(50, 50, seed=7)
    first = upload(client, data, filename="a.jpg", ctype="image/png")
    second = upload(client, data, key=BOB, filename="b.gif", ctype="text/plain")
    third = client.post(
        "/v1/images", data=data, headers={**auth(BOB), "Content-Type": "application/pdf"}
    )
    assert [r.status_code for r in (first, second, third)] == [201, 201, 201]
    assert first.json["deduplicated"] is False
    assert second.json["deduplicated"] is True and third.json["deduplicated"] is True
    assert first.json["hash"] == second.json["hash"] == third.json["hash"]
    assert [first.json["ref_count"], second.json["ref_count"], third.json["ref_count"]] == [1, 2, 3]
    assert len({first.json["id"], second.json["id"], third.json["id"]}) == 3
    assert all(r.json["mime_type"] == "image/jpeg" for r in (first, second, third))
    assert len(blob_files(data_dir)) == 1
    admin = client.get(f"/v1/objects/{first.json['hash']}", headers=auth(ADMIN))
    assert admin.json["ref_count"] == 3


def test_ref_count_through_delete_repeat_delete_and_restore(client):
    data = images.jpeg(40, 40, seed=3)
    a = upload(client, data).json
    b = upload(client, data).json
    assert b["ref_count"] == 2
    assert client.delete(f"/v1/images/{a['id']}", headers=auth()).status_code == 204
    assert client.get(f"/v1/images/{b['id']}", headers=auth()).json["ref_count"] == 1
    repeat = client.delete(f"/v1/images/{a['id']}", headers=auth())
    assert repeat.status_code == 404 and repeat.json["error"]["code"] == "not_found"
    assert client.get(f"/v1/images/{b['id']}", headers=auth()).json["ref_count"] == 1
    assert client.get(f"/v1/images/{a['id']}", headers=auth()).status_code == 404
    restored = client.post(f"/v1/images/{a['id']}/restore", headers=auth())
    assert restored.status_code == 200 and restored.json["ref_count"] == 2
    again = client.post(f"/v1/images/{a['id']}/restore", headers=auth())
    assert again.status_code == 404


def test_other_owners_get_404_and_admin_sees_objects(client):
    doc = upload(client, images.jpeg(seed=11)).json
    assert client.get(f"/v1/images/{doc['id']}", headers=auth(BOB)).status_code == 404
    assert client.delete(f"/v1/images/{doc['id']}", headers=auth(BOB)).status_code == 404
    assert client.get(f"/v1/images/{doc['id']}", headers=auth()).status_code == 200
    assert client.get(f"/v1/objects/{doc['hash']}", headers=auth(BOB)).status_code == 403
    listing = client.get("/v1/objects", headers=auth(ADMIN))
    assert listing.status_code == 200
    (obj,) = listing.json["items"]
    assert obj["hash"] == doc["hash"] and obj["tier"] == "hot" and obj["ref_count"] == 1
    assert obj["last_accessed_at"] is not None and obj["deleted_at"] is None


def test_auth_required_and_unknown_key_rejected(client):
    r = client.post("/v1/images", data=images.jpeg())
    assert r.status_code == 401 and r.json["error"]["code"] == "unauthorized"
    r = client.get("/v1/images", headers=auth("not-a-real-key-xyz"))
    assert r.status_code == 401
    r = client.get("/v1/images", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401


def test_listing_newest_first_with_cursor(client):
    ids = [upload(client, images.jpeg(seed=100 + i)).json["id"] for i in range(5)]
    upload(client, images.jpeg(seed=999), key=BOB)
    page1 = client.get("/v1/images?limit=2", headers=auth()).json
    assert [d["id"] for d in page1["items"]] == ids[::-1][:2]
    page2 = client.get(f"/v1/images?limit=2&cursor={page1['next_cursor']}", headers=auth()).json
    page3 = client.get(f"/v1/images?limit=2&cursor={page2['next_cursor']}", headers=auth()).json
    assert [d["id"] for d in page2["items"] + page3["items"]] == ids[::-1][2:]
    assert page3["next_cursor"] is None
    client.delete(f"/v1/images/{ids[0]}", headers=auth())
    listed = client.get("/v1/images", headers=auth()).json["items"]
    assert ids[0] not in [d["id"] for d in listed] and len(listed) == 4
    for bad in ("!!!", "zzzz", "a" * 300):
        r = client.get(f"/v1/images?cursor={bad}", headers=auth())
        assert r.status_code == 400 and r.json["error"]["code"] == "invalid_cursor"
    assert client.get("/v1/images?limit=0", headers=auth()).status_code == 400
    assert client.get("/v1/images?limit=abc", headers=auth()).status_code == 400


def test_public_config(client):
    cfg = client.get("/v1/config").json
    assert cfg["formats"] == ["jpeg", "webp", "avif"]
    assert cfg["presets"]["high"]["jpeg"]["quality"] == 85
    assert cfg["widths"] == [160, 320, 480, 640, 960, 1280, 1920, 2560]
    assert cfg["max_output_side"] == 4096
    assert cfg["cdn_base_url"] == "http://localhost"
