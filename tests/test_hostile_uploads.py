"""Hostile uploads: each gets its status and a JSON error, and leaves nothing behind."""

from __future__ import annotations

import io

import pytest

from app.service import CONCURRENT_CHECK_BYTES
from tests import images
from tests.conftest import ADMIN, auth, make_settings
from tests.imaging.samples import encode, noisy_rgb
from tests.test_upload_api import blob_files, staging_files

TRUNCATED_JPEG = images.jpeg(200, 200)[:600]
# Large enough that the decode check runs on a second thread while the blob is written, so a
# refusal has to take back a blob that was already installed.
BIG_JPEG = encode(noisy_rgb(800, 600, noise=0.5), "JPEG", quality=90)
BIG_PROGRESSIVE = encode(noisy_rgb(800, 600, noise=0.5), "JPEG", quality=90, progressive=True)
assert len(BIG_JPEG) > CONCURRENT_CHECK_BYTES + 8192
assert len(BIG_PROGRESSIVE) > CONCURRENT_CHECK_BYTES + 8192


def _entropy_middle(data: bytes) -> int:
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    return (start + len(data)) // 2


def _inserted(data: bytes, marker: bytes) -> bytes:
    """A marker segment where entropy-coded data should continue: a decoder error."""
    at = _entropy_middle(data)
    return data[:at] + marker + data[at:]


# Large, new, undecodable: truncated at several points, corrupt entropy-coded data.
BIG_UNDECODABLE = [
    (f"big {kind} jpeg truncated at {where}", data[:cut])
    for kind, data in (("baseline", BIG_JPEG), ("progressive", BIG_PROGRESSIVE))
    for where, cut in (
        ("the limit of the concurrent check", CONCURRENT_CHECK_BYTES + 1),
        ("three quarters", len(data) * 3 // 4),
        ("its last 2 bytes (EOI)", len(data) - 2),
    )
] + [
    (f"big {kind} jpeg with {what} inside the scan", _inserted(data, marker))
    for kind, data in (("baseline", BIG_JPEG), ("progressive", BIG_PROGRESSIVE))
    for what, marker in (
        ("an SOF marker", b"\xff\xc0\x00\x11"),
        ("an SOS marker", b"\xff\xda\x00\x02"),
        ("a DHT marker", b"\xff\xc4\x00\x03\x00"),
    )
]
HOSTILE = [
    ("empty body", b"", 400, "missing_file"),
    ("one byte", b"\xff", 415, "unsupported_media_type"),
    ("text", images.TEXT, 415, "unsupported_media_type"),
    ("svg", images.SVG, 415, "unsupported_media_type"),
    ("html", images.HTML, 415, "unsupported_media_type"),
    ("pdf", images.PDF, 415, "unsupported_media_type"),
    ("tiff", images.tiff(), 415, "unsupported_media_type"),
    ("bmp", images.bmp(), 415, "unsupported_media_type"),
    ("truncated jpeg", TRUNCATED_JPEG, 422, "undecodable"),
    ("jpeg magic then garbage", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, 422, "undecodable"),
    ("png claiming 60000x60000", images.png_claiming(60000, 60000), 422, "too_many_pixels"),
    ("jpeg SOF claiming 65000x65000", images.jpeg_claiming(65000, 65000), 422, "too_many_pixels"),
    ("gif screen 65535x65535", images.gif_claiming(65535, 65535), 422, "too_many_pixels"),
] + [(name, data, 422, "undecodable") for name, data in BIG_UNDECODABLE]


def assert_nothing_left(client, data_dir):  # type: ignore[no-untyped-def]
    assert blob_files(data_dir) == []
    assert staging_files(data_dir) == []
    assert client.get("/v1/objects", headers=auth(ADMIN)).json["items"] == []
    assert client.get("/v1/images", headers=auth()).json["items"] == []


@pytest.mark.parametrize(("name", "body", "status", "code"), HOSTILE, ids=[h[0] for h in HOSTILE])
@pytest.mark.parametrize("transport", ["raw", "multipart"])
def test_hostile_upload(client, data_dir, name, body, status, code, transport):
    if transport == "raw":
        r = client.post("/v1/images", data=body, headers={**auth(), "Content-Type": "image/jpeg"})
    else:
        r = client.post(
            "/v1/images",
            data={"file": (io.BytesIO(body), "x.jpg", "image/jpeg")},
            headers=auth(),
            content_type="multipart/form-data",
        )
    assert r.status_code == status, (name, r.json)
    assert r.json["error"]["code"] == (code if body or transport == "raw" else "missing_file")
    assert isinstance(r.json["error"]["message"], str) and r.json["error"]["message"]
    assert_nothing_left(client, data_dir)
    ok = client.post("/v1/images", data=images.jpeg(), headers=auth())
    assert ok.status_code == 201


def test_missing_file_field(client, data_dir):
    r = client.post(
        "/v1/images",
        data={"other": (io.BytesIO(images.jpeg()), "x.jpg")},
        headers=auth(),
        content_type="multipart/form-data",
    )
    assert r.status_code == 400 and r.json["error"]["code"] == "missing_file"
    assert_nothing_left(client, data_dir)


def test_lying_content_type_is_ignored(client, data_dir):
    r = client.post("/v1/images", data=images.TEXT, headers={**auth(), "Content-Type": "image/png"})
    assert r.status_code == 415
    assert_nothing_left(client, data_dir)
    r = client.post(
        "/v1/images", data=images.gif(), headers={**auth(), "Content-Type": "image/png"}
    )
    assert r.status_code == 201 and r.json["mime_type"] == "image/gif"


def test_over_size_limit_is_413_and_stops(data_dir):
    from app import create_app

    app = create_app(make_settings(data_dir, max_upload_bytes=50_000))
    client = app.test_client()
    big = images.png(400, 400, mode="RGB") + b"\x00" * 60_000
    for transport in ("raw", "multipart"):
        if transport == "raw":
            r = client.post("/v1/images", data=big, headers=auth())
        else:
            r = client.post(
                "/v1/images",
                data={"file": (io.BytesIO(big), "big.png")},
                headers=auth(),
                content_type="multipart/form-data",
            )
        assert r.status_code == 413, r.json
        assert r.json["error"]["code"] == "payload_too_large"
        assert_nothing_left(client, data_dir)
    assert client.post("/v1/images", data=images.jpeg(), headers=auth()).status_code == 201


def test_invalid_private_flag(client, data_dir):
    r = client.post("/v1/images?private=maybe", data=images.jpeg(), headers=auth())
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_private"
    assert_nothing_left(client, data_dir)
