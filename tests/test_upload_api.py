"""Upload, dedup, references, delete and restore through the HTTP API (real SQLite, disk)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from app.staging_spares import SPARE_PREFIX
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
    """What an upload left in staging: everything but the spares kept for the next uploads
    (bounded and short-lived; tests/test_staging_spares.py holds them to that)."""
    return leftovers(data_dir / "staging")


def leftovers(directory: Path) -> list[Path]:
    if not directory.exists():
        return []
    return [p for p in directory.iterdir() if not p.name.startswith(SPARE_PREFIX)]


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


# --- reading the raw body -------------------------------------------------------------------
# gunicorn sets wsgi.input_terminated: the body is then read from wsgi.input directly (see
# app.http.uploads); werkzeug's test client does not, so these tests set it themselves.
TERMINATED = {"wsgi.input_terminated": True}


class CountingStream(io.BytesIO):
    """A body that records how much was read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.taken = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.taken += len(data)
        return data


def test_raw_body_read_from_the_servers_terminated_stream(client, data_dir):
    data = images.jpeg(300, 200, seed=31)
    r = client.post("/v1/images", data=data, headers=auth(), environ_overrides=TERMINATED)
    assert r.status_code == 201, r.json
    assert r.json["hash"] == hashlib.sha256(data).hexdigest() and r.json["size"] == len(data)
    assert [p.read_bytes() for p in blob_files(data_dir)] == [data]
    assert staging_files(data_dir) == []


def test_raw_body_shorter_than_its_content_length_is_refused(client, data_dir):
    """A client gone mid-upload: gunicorn's reader ends the body early instead of failing, and
    a prefix of an image may decode (this PNG is complete, 500 bytes are missing after it)."""
    data = images.png(40, 30, seed=32)
    for overrides in (TERMINATED, {}):  # the server's stream, and werkzeug's guarded one
        r = client.post(
            "/v1/images",
            input_stream=io.BytesIO(data),
            headers=auth(),
            environ_overrides={**overrides, "CONTENT_LENGTH": str(len(data) + 500)},
        )
        assert r.status_code == 400, r.json
        assert r.json["error"]["code"] in ("incomplete_body", "bad_request")
        assert blob_files(data_dir) == [] and staging_files(data_dir) == []
    assert client.get("/v1/images", headers=auth()).json["items"] == []


def test_declared_length_over_the_limit_is_413(data_dir):
    """Over the request ceiling (limit + multipart slack): refused before a byte is read, as
    werkzeug's guarded stream does. Between the limit and the ceiling: read up to one byte
    past the limit, then refused (nginx streams such a body and must see the 413)."""
    from app import create_app
    from tests.conftest import make_settings

    client = create_app(make_settings(data_dir, max_upload_bytes=50_000)).test_client()
    for declared, read in ((50_000 + 64 * 1024 + 1, 0), (60_003, 50_001)):
        body = CountingStream(b"\xff\xd8\xff" + b"\0" * (declared - 3))
        r = client.post(
            "/v1/images",
            input_stream=body,
            headers=auth(),
            environ_overrides={**TERMINATED, "CONTENT_LENGTH": str(declared)},
        )
        assert r.status_code == 413 and r.json["error"]["code"] == "payload_too_large"
        assert body.taken == read
        assert staging_files(data_dir) == []


def test_undeclared_length_stops_one_byte_past_the_limit(data_dir):
    """Chunked (no Content-Length): reading stops as soon as the limit is passed, whatever the
    read size."""
    from app import create_app
    from tests.conftest import make_settings

    client = create_app(make_settings(data_dir, max_upload_bytes=50_000)).test_client()
    body = CountingStream(b"\xff\xd8\xff" + b"\0" * 3_000_000)
    r = client.post(
        "/v1/images",
        input_stream=body,
        headers=auth(),
        environ_overrides={**TERMINATED, "CONTENT_LENGTH": ""},
    )
    assert r.status_code == 413 and r.json["error"]["code"] == "payload_too_large"
    assert body.taken == 50_001
    assert staging_files(data_dir) == []


def test_incomplete_body_against_gunicorn(data_dir):
    import socket

    from tests.conftest import ALICE
    from tests.live import gunicorn

    data = images.png(40, 30, seed=33)
    with gunicorn(data_dir, workers=1) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                f"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n"
                f"Content-Length: {len(data) + 1000}\r\n\r\n".encode()
                + data
            )
            sock.shutdown(socket.SHUT_WR)  # the client stops sending
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
        assert b'"incomplete_body"' in answer
        assert blob_files(data_dir) == [] and staging_files(data_dir) == []
        assert "Traceback" not in server.logs()


# --- the staging pipeline: hash and write stages, reused buffers, the socket body ----------
class Trickle(io.RawIOBase):
    """A raw body arriving a little at a time, as a socket hands it out; counts what it gave."""

    def __init__(self, data: bytes, step: int = 70_000) -> None:
        super().__init__()
        self.data = memoryview(data)
        self.step = step
        self.taken = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def,override]
        n = min(len(buffer), self.step, len(self.data) - self.taken)
        buffer[:n] = self.data[self.taken : self.taken + n]
        self.taken += n
        return n


def _hash_threads() -> list[str]:
    """The stage threads of uploads still running (none once copy_from has returned)."""
    import threading

    return [t.name for t in threading.enumerate() if t.name in ("upload-hash", "upload-write")]


def test_staging_hashes_and_writes_every_size_through_both_readers(tmp_path):
    import os

    from app.staging import CHUNK, DEPTH, StagingFile

    sizes = (1, CHUNK - 1, CHUNK, CHUNK + 1, DEPTH * CHUNK, 2 * DEPTH * CHUNK + 17)
    for size in sizes:
        data = os.urandom(size)
        for stream in (Trickle(data), io.BytesIO(data), Trickle(data, step=CHUNK * 3)):
            staged = StagingFile(tmp_path, limit=size)
            staged.copy_from(stream)
            assert staged.finish() == hashlib.sha256(data).hexdigest(), (size, stream)
            assert staged.size == size and Path(staged.path).read_bytes() == data
            staged.discard()
    assert leftovers(tmp_path) == [] and _hash_threads() == []


def test_staging_raw_body_stops_one_byte_past_the_limit(tmp_path):
    import pytest

    from app.errors import PayloadTooLarge
    from app.staging import CHUNK, StagingFile

    limit = 3 * CHUNK + 5
    body = Trickle(b"\xff" * (6 * CHUNK))
    staged = StagingFile(tmp_path, limit=limit)
    with pytest.raises(PayloadTooLarge):
        staged.copy_from(body)
    assert body.taken == limit + 1
    staged.discard()
    assert leftovers(tmp_path) == [] and _hash_threads() == []


def test_staging_write_failure_mid_upload_waits_for_the_hash_thread(tmp_path, monkeypatch):
    import errno
    import os

    import pytest

    import app.staging as staging_mod
    from app.errors import InsufficientStorage
    from app.staging import CHUNK, StagingFile

    class Full(io.RawIOBase):
        def __init__(self, fd: int) -> None:
            self.fd, self.room = fd, 2 * CHUNK

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:  # type: ignore[no-untyped-def,override]
            if len(data) > self.room:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.room -= len(data)
            return os.write(self.fd, data)

    monkeypatch.setattr(staging_mod.os, "fdopen", lambda fd, mode: Full(fd))
    for body in (Trickle(os.urandom(5 * CHUNK)), io.BytesIO(os.urandom(5 * CHUNK))):
        staged = StagingFile(tmp_path, limit=10 * CHUNK)
        with pytest.raises(InsufficientStorage):
            staged.copy_from(body)
        staged.discard()
        assert leftovers(tmp_path) == [] and _hash_threads() == []


def _read_response(f) -> tuple[int, dict[str, str], bytes]:  # type: ignore[no-untyped-def]
    status = int(f.readline().split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, f.read(int(headers.get("content-length", 0)))


def test_raw_uploads_over_gunicorn_keep_the_connection_in_step(data_dir):
    """The body is read from gunicorn's socket (GunicornSocketBody): what gunicorn had already
    received comes first, nothing past the body is consumed (a pipelined request is answered
    next), and after a 413 gunicorn still drains exactly the rest of the body."""
    import json
    import os
    import socket

    from tests.conftest import ALICE
    from tests.live import gunicorn

    limit = 3 * 1024 * 1024
    big = images.png(64, 48, seed=34) + os.urandom(2 * 1024 * 1024 + 123)
    small = images.png(40, 30, seed=35)
    over = b"\x89PNG" + b"\0" * (limit + 1000)  # over the limit, under the request ceiling

    def post(body: bytes) -> bytes:
        return (
            f"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    with gunicorn(data_dir, workers=1, IMAGE_ORIGIN_MAX_UPLOAD_BYTES=str(limit)) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            f = sock.makefile("rb")
            # two uploads and a GET in one write: each body ends where the next request starts
            sock.sendall(post(big) + post(small) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answers = [_read_response(f) for _ in range(3)]
            assert [a[0] for a in answers] == [201, 201, 200], answers
            assert json.loads(answers[0][2])["hash"] == hashlib.sha256(big).hexdigest()
            assert json.loads(answers[1][2])["hash"] == hashlib.sha256(small).hexdigest()
            sock.sendall(post(big))  # a duplicate on the same connection
            status, _, doc = _read_response(f)
            assert status == 201 and json.loads(doc)["deduplicated"] is True
            sock.sendall(post(over) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, doc = _read_response(f)
            assert status == 413 and json.loads(doc)["error"]["code"] == "payload_too_large"
            # gunicorn drained the rest of the refused body, and the next request is in step
            assert _read_response(f)[0] == 200
        assert sorted(p.read_bytes() for p in blob_files(data_dir)) == sorted([big, small])
        assert staging_files(data_dir) == []
        assert "Traceback" not in server.logs()


def test_a_refused_body_within_a_proxys_slack_is_read_so_the_connection_stays_in_step(data_dir):
    """nginx lets bodies up to the limit + 1 MiB through, streaming; gunicorn drains only 64 KiB
    of what the app leaves unread, then closes mid-body (nginx then answers 502, not our 413).
    A refused body up to REFUSED_BODY_DRAIN over the ceiling is read to its end first, whether
    refused from its Content-Length, at the limit, or chunked; a larger one is refused at once
    without waiting for it."""
    import json
    import os
    import socket

    from app.http.uploads import REFUSED_BODY_DRAIN
    from tests.conftest import ALICE
    from tests.live import gunicorn

    limit = 1024 * 1024
    head = f"POST /v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ALICE}\r\n"
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

    def declared(body: bytes) -> bytes:
        return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body

    def chunked(body: bytes) -> bytes:
        step = 256 * 1024
        parts = [
            b"%x\r\n%s\r\n" % (len(body[i : i + step]), body[i : i + step])
            for i in range(0, len(body), step)
        ]
        return f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + b"".join(parts) + b"0\r\n\r\n"

    over_ceiling = b"\xff\xd8\xff" + os.urandom(limit + 1024 * 1024)  # refused from its length
    at_limit = b"\xff\xd8\xff" + os.urandom(limit + 40 * 1024)  # under the ceiling: read to it
    with gunicorn(data_dir, workers=1, IMAGE_ORIGIN_MAX_UPLOAD_BYTES=str(limit)) as server:
        host, port = server.url.removeprefix("http://").split(":")
        for request in (declared(over_ceiling), declared(at_limit), chunked(over_ceiling)):
            with (
                socket.create_connection((host, int(port)), timeout=30) as sock,
                sock.makefile("rb") as f,
            ):
                sock.sendall(request + health)
                status, _, doc = _read_response(f)
                assert status == 413 and json.loads(doc)["error"]["code"] == "payload_too_large"
                assert _read_response(f)[0] == 200  # the body was read: the next one is in step
        # declared far past any proxy's slack: refused without waiting for the body (the 413
        # comes while the client has sent 1,000 of its bytes)
        huge = limit + 64 * 1024 + REFUSED_BODY_DRAIN + 1
        with (
            socket.create_connection((host, int(port)), timeout=10) as sock,
            sock.makefile("rb") as f,
        ):
            sock.sendall(f"{head}Content-Length: {huge}\r\n\r\n".encode() + b"\xff" * 1000)
            assert _read_response(f)[0] == 413
        assert blob_files(data_dir) == [] and staging_files(data_dir) == []
        assert "Traceback" not in server.logs()


def test_draining_a_refused_body_gives_up_on_a_client_that_stops_sending(app, monkeypatch):
    """The drain before a 413 is bounded in time too: a stalled client holds no thread."""
    import socket
    import threading
    import time

    import app.http.uploads as uploads_mod

    monkeypatch.setattr(uploads_mod, "DRAIN_SECONDS", 0.3)
    ours, client_side = socket.socketpair()
    client_side.sendall(b"x" * 1000)  # then nothing more, connection left open
    stream = ours.makefile("rb")
    environ = {"wsgi.input_terminated": True, "wsgi.input": stream, "gunicorn.socket": ours}
    length = str(app.config["MAX_CONTENT_LENGTH"] + 1024)
    with app.test_request_context(
        "/v1/images", method="POST", headers={"Content-Length": length}, environ_overrides=environ
    ):
        rescue = threading.Timer(10, client_side.close)  # a drain that never ends fails, too
        rescue.start()
        started = time.monotonic()
        uploads_mod.drain_refused_body()
        elapsed = time.monotonic() - started
        rescue.cancel()
        assert 0.25 < elapsed < 3, f"the drain waited {elapsed:.1f} s for a body that never came"
        assert ours.gettimeout() is None  # the socket is left as gunicorn had it
    stream.close()
    ours.close()
    client_side.close()


def test_a_staging_write_that_fails_stops_reading_the_body(tmp_path):
    """The write runs on its own stage: a full disk still ends the upload within a few chunks
    (507 insufficient_storage), not after the whole body has been read and hashed."""
    import errno

    import pytest

    from app.errors import InsufficientStorage
    from app.staging import CHUNK, DEPTH, StagingFile

    class FullDisk:
        def __init__(self) -> None:
            self.writes = 0

        def write(self, data) -> int:  # type: ignore[no-untyped-def]
            self.writes += 1
            if self.writes > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return len(data)

        def close(self) -> None:
            pass

    body = Trickle(b"\x00" * (40 * CHUNK), step=CHUNK)
    staged = StagingFile(tmp_path, limit=50 * CHUNK)
    real = staged._fh
    staged._fh = FullDisk()  # type: ignore[assignment]
    with pytest.raises(InsufficientStorage):
        staged.copy_from(body)
    assert body.taken <= (DEPTH + 3) * CHUNK, body.taken // CHUNK
    assert _hash_threads() == []
    real.close()  # type: ignore[union-attr]
    staged.discard()
    assert leftovers(tmp_path) == []
