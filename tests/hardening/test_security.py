"""The security review (SECURITY.md), as tests: each finding with the test that would have
caught it, and the properties the review checked and found holding.

Headers on every kind of answer, no HTML from image routes, no leaks in errors, hostile paths,
tokens, headers, query strings and bodies, owner isolation, multipart limits.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import socket
import time
from pathlib import Path

import pytest
import requests

from app.storage import StorageError, keys
from tests import images
from tests.conftest import ADMIN, ALICE, BOB, SIGNING, auth
from tests.hardening.client import Live
from tests.hardening.conftest import LEAKS, assert_json_error
from tests.imaging.test_jpeg_structure import progressive_with_scans
from tests.live import gunicorn
from tests.test_upload_api import blob_files, staging_files

PRIVATE_PATH_MARK = "/very/secret/server/path"


@pytest.fixture
def uploaded(client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    public = client.post("/v1/images", data=images.jpeg(200, 100, seed=701), headers=auth())
    private = client.post(
        "/v1/images?private=true", data=images.png(60, 40, seed=702), headers=auth()
    )
    assert public.status_code == private.status_code == 201
    return {
        "hash": public.json["hash"],
        "id": public.json["id"],
        "private": private.json["hash"],
        "private_id": private.json["id"],
    }


# --- headers on every kind of answer ------------------------------------------------------------
def test_nosniff_on_every_kind_of_answer(client, uploaded, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    h = uploaded["hash"]
    answers = {
        "image 200": client.get(f"/{h}/original"),
        "variant 200": client.get(f"/{h}/webp/low/160"),
        "json 200": client.get("/v1/config"),
        "201": client.post("/v1/images", data=images.gif(seed=703), headers=auth()),
        "304": client.get(f"/{h}/original", headers={"If-None-Match": f'"{h}"'}),
        "HEAD 200": client.head(f"/{h}/jpeg/high"),
        "HEAD 404": client.head(f"/{'0' * 64}/original"),
        "OPTIONS image": client.open(f"/{h}/original", method="OPTIONS"),
        "OPTIONS api": client.open("/v1/images", method="OPTIONS"),
        "400": client.get(f"/{h}/webp/high/123"),
        "401": client.get("/v1/images"),
        "403": client.get(f"/{uploaded['private']}/original"),
        "404 route": client.get("/no/such/route/at/all/here"),
        "404 hash": client.get(f"/{'ab' * 32}/original"),
        "405": client.put(f"/{h}/original"),
        "413": client.post("/v1/images", data=b"x" * (26 * 1024 * 1024 + 1), headers=auth()),
        "415": client.post("/v1/images", data=images.HTML, headers=auth()),
        "422": client.post("/v1/images", data=images.png_claiming(60000, 60000), headers=auth()),
    }
    deleted = client.post("/v1/images", data=images.jpeg(seed=704), headers=auth()).json
    answers["204"] = client.delete(f"/v1/images/{deleted['id']}", headers=auth())
    answers["410"] = client.get(f"/{deleted['hash']}/original")

    def boom(*_a, **_k):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"database at {PRIVATE_PATH_MARK} said: password=hunter2")

    monkeypatch.setattr(client.application.config["IMAGE_ORIGIN"].service, "get_variant", boom)
    answers["500"] = client.get(f"/{h}/avif/low/320")
    for name, r in answers.items():
        assert r.headers.get("X-Content-Type-Options") == "nosniff", name
    assert answers["500"].status_code == 500
    assert answers["500"].json == {"error": {"code": "internal_error", "message": "internal error"}}
    assert PRIVATE_PATH_MARK not in answers["500"].get_data(as_text=True)


def test_image_routes_never_answer_html(client, uploaded) -> None:  # type: ignore[no-untyped-def]
    h, p = uploaded["hash"], uploaded["private"]
    paths = [
        f"/{h}/original", f"/{h}/jpeg/high", f"/{h}/gif/high", f"/{h}/jpeg/x", f"/{h}/jpeg/high/7",
        f"/{p}/original", f"/{'ab' * 32}/original", f"/s/x/{h}/original", f"/{h}/auto/high/160",
        f"/s/1.{'A' * 43}/{p}/webp/high",
    ]  # fmt: skip
    for path in paths:
        for method in ("GET", "HEAD", "OPTIONS", "POST", "DELETE", "TRACE"):
            r = client.open(path, method=method)
            content_type = r.headers.get("Content-Type", "")
            assert "html" not in content_type, (method, path, r.status_code, content_type)
            if r.status_code >= 400 and method != "HEAD":
                assert_json_error(r)
    for path in (f"/{h}/original", f"/{h}/webp/high/160", "/v1/images", "/healthz"):
        options = client.open(path, method="OPTIONS")
        assert options.status_code == 204 and not options.data, path
        assert "Content-Type" not in options.headers, path
        assert set(options.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "HEAD"}


def test_image_responses_carry_a_sandbox_policy(client, uploaded) -> None:  # type: ignore[no-untyped-def]
    """A polyglot (a valid GIF that is also HTML) is served as image/gif, nosniff, and a
    sandboxed CSP: opened directly, it can run nothing."""
    polyglot = images.gif(8, 8, seed=705)[:-1] + b"<script>alert(document.domain)</script>;"
    doc = client.post("/v1/images", data=polyglot, headers=auth())
    assert doc.status_code == 201, doc.json  # a valid GIF: accepted, so it must be served safely
    r = client.get(f"/{doc.json['hash']}/original")
    assert r.headers["Content-Type"] == "image/gif"
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp
    for path in (f"/{uploaded['hash']}/webp/low/160", f"/{uploaded['private']}/original"):
        assert "sandbox" in client.get(path).headers["Content-Security-Policy"]


# --- errors leak nothing ------------------------------------------------------------------------
def test_storage_errors_leak_no_path(client, uploaded, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    blobs = client.application.config["IMAGE_ORIGIN"].blobs

    def broken(*_a, **_k):  # type: ignore[no-untyped-def]
        raise StorageError(f"local store: cannot open {PRIVATE_PATH_MARK}/sha256/ab/cd: EIO")

    monkeypatch.setattr(blobs, "open", broken)
    monkeypatch.setattr(blobs, "put_file", broken)
    monkeypatch.setattr(blobs, "get_bytes", broken)
    answers = [
        client.get(f"/{uploaded['hash']}/original"),
        client.get(f"/{uploaded['hash']}/jpeg/low/320"),
        client.post("/v1/images", data=images.png(33, 33, seed=706), headers=auth()),
    ]
    for r in answers:
        assert assert_json_error(r, {503}) == "storage_unavailable"
        assert PRIVATE_PATH_MARK not in r.get_data(as_text=True)


def test_decoder_errors_leak_nothing(client) -> None:  # type: ignore[no-untyped-def]
    for body in (images.jpeg(64, 64)[:300], b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b"GIF89a\xff\xff"):
        r = client.post("/v1/images", data=body, headers=auth())
        assert_json_error(r)
        message = r.json["error"]["message"]
        assert not LEAKS.search(message) and "PIL" not in message, message
        assert not re.search(r"/(tmp|work|root|home|usr|var|etc)\b", message), message


def test_a_progressive_scan_bomb_is_refused_at_upload_and_stores_nothing(client, data_dir) -> None:  # type: ignore[no-untyped-def]
    """62 KB that took 8.5 s of CPU to decode (3,000 repeated scans over 4 MP) is a 422 on
    its markers; nothing is stored, and the next upload is served as usual."""
    r = client.post("/v1/images", data=progressive_with_scans(3000), headers=auth())
    assert assert_json_error(r, {422}) == "undecodable"
    assert "scans" in r.json["error"]["message"]
    assert blob_files(data_dir) == []
    assert (
        client.post("/v1/images", data=progressive_with_scans(0), headers=auth()).status_code == 201
    )


# --- filenames, paths, traversal ----------------------------------------------------------------
def test_filenames_are_display_only(client, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    names = {
        "../../../etc/passwd": "passwd",
        "..\\..\\windows\\win.ini": "win.ini",
        "a\x00b\x1fc\x7fd\x85e.jpg": "abcde.jpg",
        "cat\u202egpj.exe": "catgpj.exe",
        "zero\u200bwidth.png": "zerowidth.png",
        "x" * 5000 + ".jpg": "x" * 255,
        "/": None,
        " \t ": None,
    }
    for raw, expected in names.items():
        r = client.post(
            "/v1/images",
            data={"file": (io.BytesIO(images.jpeg(seed=707)), "f.jpg"), "filename": raw},
            headers=auth(),
            content_type="multipart/form-data",
        )
        assert r.status_code == 201, r.json
        assert r.json["original_filename"] == expected, raw
    # latin-1 header values (what a WSGI server hands over) go through the same cleaning
    r = client.post(
        "/v1/images",
        data=images.jpeg(seed=707),
        headers={**auth(), "X-Filename": "..\\evil\x85\x9b.jpg"},
    )
    assert r.json["original_filename"] == "evil.jpg"
    stored = blob_files(data_dir)
    assert stored and all(keys.HEX_RE.match(p.name) for p in stored)
    assert not list(data_dir.rglob("passwd")) and not list(data_dir.rglob("*.exe"))


@pytest.mark.parametrize(
    "path",
    [
        "/../../etc/passwd/original",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/{h}/../../../../etc/passwd",
        "/{h}/jpeg/..%2f..%2f..%2fetc",
        "/{h}/jpeg/high/..%2f1",
        "/{h}/%2e%2e/high",
        "/{H}/original",
        "/{h}x/original",
        "/{h}/jpeg/high/640/extra",
        "/{h}/original%00.jpg",
        "/{h}/jpeg/high%00",
    ],
)
def test_hostile_image_paths(client, uploaded, path: str) -> None:  # type: ignore[no-untyped-def]
    h = uploaded["hash"]
    r = client.get(path.format(h=h, H=h.upper()))
    assert_json_error(r, {400, 404, 405})


def test_storage_keys_refuse_traversal() -> None:
    h = "a" * 64
    for bad in (f"sha256:{h}/../x", f"sha256:../{h}", f"variant:{h}/v1/jpeg/../../x", "sha256:"):
        with pytest.raises(keys.InvalidKey):
            keys.relative_path(bad)
    with pytest.raises(keys.InvalidKey):
        keys.variant_key(h, 1, "jpeg", "../high", None)


# --- tokens -------------------------------------------------------------------------------------
def test_signed_tokens(client, uploaded) -> None:  # type: ignore[no-untyped-def]
    signer = client.application.config["IMAGE_ORIGIN"].signer
    p = uploaded["private"]
    url = signer.sign_path(f"{p}/webp/high/160", int(time.time()) + 300)
    assert client.get(url).status_code == 200
    token = url.split("/")[2]
    expiry, signature = token.split(".")
    last = signature[-1]
    sibling = next(c for c in "AQgw" if c != last)  # same 6-bit group, other unused 2 bits
    variants = {
        "non-canonical base64": url.replace(signature, signature[:-1] + sibling),
        "leading zero expiry": url.replace(f"/{expiry}.", f"/0{expiry}."),
        "other path": url.replace("/webp/high/160", "/webp/high/320"),
        "other hash": url.replace(p, uploaded["hash"]),
        "unicode": url.replace(signature, signature[:-1] + "é"),
        "overlong": url + "/" + "a" * 600,
        "huge expiry": url.replace(f"/{expiry}.", "/99999999999999."),
        "trailing slash": url + "/",
        "percent-encoded": url.replace("/webp/", "/%77ebp/"),
    }
    for name, tampered in variants.items():
        r = client.get(tampered)
        assert r.status_code in (403, 404), (name, r.status_code)
        assert_json_error(r, {403, 404})
    expired = signer.sign_path(f"{p}/original", int(time.time()) - 1)
    assert client.get(expired).json["error"]["code"] == "signature_expired"


# --- authentication and authorisation -----------------------------------------------------------
def test_authorization_header_edge_cases(client) -> None:  # type: ignore[no-untyped-def]
    data = images.jpeg(seed=708)
    refused = [
        "",
        "Bearer",
        "Bearer ",
        f"Basic {base64.b64encode(f'alice:{ALICE}'.encode()).decode()}",
        f"Bearer {ALICE}x",
        f"Bearer {ALICE[:-1]}",
        f"Token {ALICE}",
        f"Bearer {ALICE.upper()}",
        "Bearer " + "k" * 100_000,
        f"Bearer {ALICE}\x00",
        f"Bearer {SIGNING}",
    ]
    for header in refused:
        started = time.monotonic()
        r = client.post("/v1/images", data=data, headers={"Authorization": header})
        assert assert_json_error(r, {401}) == "unauthorized", header[:40]
        assert time.monotonic() - started < 2
    for header in (f"bearer {ALICE}", f"BEARER   {ALICE}  "):
        assert (
            client.post("/v1/images", data=data, headers={"Authorization": header}).status_code
            == 201
        )


def test_owner_isolation_and_admin_views(client, uploaded) -> None:  # type: ignore[no-untyped-def]
    ref = uploaded["id"]
    for method, path in (
        ("GET", f"/v1/images/{ref}"),
        ("DELETE", f"/v1/images/{ref}"),
        ("POST", f"/v1/images/{ref}/restore"),
        ("POST", f"/v1/images/{ref}/signed-url"),
    ):
        r = client.open(path, method=method, headers=auth(BOB), json={})
        assert assert_json_error(r, {404}) == "not_found", (method, path)
    assert client.get(f"/v1/images/{ref}", headers=auth()).status_code == 200  # untouched
    assert client.get("/v1/objects", headers=auth(BOB)).status_code == 403
    assert client.get(f"/v1/objects/{uploaded['hash']}", headers=auth(ALICE)).status_code == 403
    assert client.get(f"/v1/objects/{uploaded['hash']}", headers=auth(ADMIN)).status_code == 200


def test_method_override_headers_are_ignored(client, uploaded) -> None:  # type: ignore[no-untyped-def]
    ref = uploaded["id"]
    for header in ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"):
        headers = {**auth(), header: "DELETE"}
        assert client.get(f"/v1/images/{ref}", headers=headers).status_code == 200
        assert client.post(f"/v1/images/{ref}", headers=headers).status_code == 405
    assert client.post(f"/v1/images/{ref}?_method=DELETE", headers=auth()).status_code == 405
    assert client.get(f"/v1/images/{ref}", headers=auth()).status_code == 200


def test_reference_ids_are_checked_before_the_database(client) -> None:  # type: ignore[no-untyped-def]
    for ref in ("%00", "img_%00", "img_" + "a" * 5000, "img_%ED%A0%80", "' OR 1=1 --", "img_a/b"):
        for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/restore")):
            r = client.open(f"/v1/images/{ref}{suffix}", method=method, headers=auth())
            assert_json_error(r, {404, 405})


# --- query strings and bodies -------------------------------------------------------------------
def test_list_query_strings(client, uploaded) -> None:  # type: ignore[no-untyped-def]
    for limit in ("²", "١٠", "1" * 5000, "-1", "0", "1001", "1e3", " 5", "0x10", "5\x00"):
        r = client.get("/v1/images", query_string={"limit": limit}, headers=auth())
        assert assert_json_error(r, {400}) == "invalid_limit", limit
    for cursor in ("%%%", "A" * 300, base64.urlsafe_b64encode(b"s-1").decode(), "é", "s1"):
        r = client.get("/v1/images", query_string={"cursor": cursor}, headers=auth())
        assert assert_json_error(r, {400}) == "invalid_cursor", cursor
    r = client.get("/v1/images?limit=1&limit=1000&cursor=&cursor=x", headers=auth())
    assert r.status_code == 200


def test_overflowing_cursor_is_not_a_500(client) -> None:  # type: ignore[no-untyped-def]
    """Found by the review: a 19-digit cursor passed the length check and overflowed SQLite's
    64-bit integer (a 500). sql.decode_seq_cursor now clamps it ("from the newest")."""
    for digits in ("9" * 19, "9223372036854775808", "0" * 19):
        cursor = base64.urlsafe_b64encode(f"s{digits}".encode()).decode().rstrip("=")
        r = client.get("/v1/images", query_string={"cursor": cursor}, headers=auth())
        assert r.status_code in (200, 400), (digits, r.status_code)


def test_signed_url_bodies_are_bounded(client, uploaded) -> None:  # type: ignore[no-untyped-def]
    url = f"/v1/images/{uploaded['id']}/signed-url"
    headers = {**auth(), "Content-Type": "application/json"}
    deep = client.post(url, data="[" * 15_000, headers=headers)  # under the size limit
    assert assert_json_error(deep, {400}) == "invalid_json"
    big = client.post(url, data=b" " * 20_000 + b"{}", headers=headers)
    assert assert_json_error(big, {413}) == "payload_too_large"
    ok = client.post(
        url, json={"format": "webp", "quality": "high", "expires_in": 60}, headers=auth()
    )
    assert ok.status_code == 200


def test_range_and_conditional_headers(client, uploaded) -> None:  # type: ignore[no-untyped-def]
    h = uploaded["hash"]
    full = client.get(f"/{h}/original").data
    for value in (
        "bytes=0-10",
        "bytes=-1",
        "bytes=999999999-",
        "bytes=5-1",
        "items=0-1",
        "x" * 9000,
    ):
        r = client.get(f"/{h}/original", headers={"Range": value})
        assert r.status_code == 200 and r.data == full, value  # ranges are ignored, not misread
    for value in ("*", 'W/"x"', '"' + h + '"', "garbage", '"' * 9000):
        r = client.get(f"/{h}/original", headers={"If-None-Match": value})
        assert r.status_code in (200, 304), value


# --- multipart ----------------------------------------------------------------------------------
def _multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    boundary = "b0undary"
    chunks = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
        )
    return b"".join(
        chunks
    ) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_multipart_limits(client, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    jpeg = images.jpeg(seed=709)
    cases = {
        "17 parts": [("file", "a.jpg", jpeg)] + [(f"f{i}", None, b"x") for i in range(16)],
        "16 file parts": [(f"file{i}", f"{i}.jpg", jpeg) for i in range(15)]
        + [("file", "a.jpg", jpeg)],
        "huge field": [("filename", None, b"n" * 300_000), ("file", "a.jpg", jpeg)],
        "no file": [("private", None, b"true")],
    }
    for name, parts in cases.items():
        body, content_type = _multipart(parts)
        r = client.post("/v1/images", data=body, headers={**auth(), "Content-Type": content_type})
        if name == "16 file parts":
            assert r.status_code == 201, r.json  # the field named "file" is the upload
        else:
            assert_json_error(r, {400, 413})
        assert staging_files(data_dir) == [], name  # every part's staging file is discarded


def _payload(size: int) -> bytes:
    """A valid PNG followed by ``size`` bytes full of boundary-like sequences (decoders stop at
    IEND): the content a multipart decoder must not mistake for the end of the part."""
    tail = (b"\r\n--b0und\r\n-" + bytes(range(256))) * (size // 268 + 1)
    return images.png(40, 40, seed=size % 97) + tail[:size]


@pytest.mark.parametrize("size", [64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 200_000, 3_000_000])
def test_multipart_uploads_larger_than_the_form_memory_limit(client, size: int) -> None:  # type: ignore[no-untyped-def]
    """Regression: werkzeug applies max_form_memory_size to its raw multipart buffer, file parts
    included; at 64 KiB (its read chunk) every multipart file over 64 KiB was a 413."""
    data = _payload(size)
    r = client.post(
        "/v1/images",
        data={"file": (io.BytesIO(data), "big.png")},
        headers=auth(),
        content_type="multipart/form-data",
    )
    assert r.status_code == 201, r.json
    assert r.json["size"] == len(data) and r.json["hash"] == hashlib.sha256(data).hexdigest()


# --- through a real gunicorn ------------------------------------------------------------------
def _raw(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if len(data) > 1_000_000:
                break
        return data


def test_live_headers_and_hostile_requests(data_dir: Path) -> None:
    with gunicorn(data_dir, workers=1, threads=4) as server:
        live = Live(server.url)
        big = _payload(2_000_000)
        multipart = live.post("/v1/images", files={"file": ("big.png", big)}, headers=auth())
        assert multipart.status_code == 201, multipart.text
        digest = multipart.json()["hash"]
        for path in (f"/{digest}/original", f"/{digest}/webp/low/160", "/v1/config", "/healthz"):
            r = live.get(path)
            assert r.status_code == 200 and r.headers["X-Content-Type-Options"] == "nosniff"
        for path in (f"/{digest}/gif/high", f"/{'0' * 64}/original", "/nope"):
            assert_json_error(live.get(path))
        # Hostile requests gunicorn answers itself (request line, header limits): a 4xx and the
        # server goes on serving. (Its own answer is a small HTML page without nosniff; behind
        # nginx, nginx answers these first: see SECURITY.md.)
        hostile = [
            b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: y\r\n" % i for i in range(200))
            + b"\r\n",
            b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /v1/images HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"GET /healthz HTTP/9.9\r\n\r\n",
        ]
        for request in hostile:
            answer = _raw(server.url, request)
            status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
            assert status == 0 or 400 <= status < 600 and status != 500, answer[:200]
            assert live.get("/healthz").status_code == 200
        # a key is never echoed in a log line, an answer, or a header
        r = live.post_alone(
            "/v1/images", data=b"x", headers={"Authorization": "Bearer wrong-key-123"}
        )
        assert r.status_code == 401
        logs = server.logs()
    assert ALICE not in logs and "wrong-key-123" not in logs
    assert "Traceback" not in logs, logs[-3000:]
    assert staging_files(data_dir) == []


def test_cdn_base_url_pins_the_urls_handed_out(data_dir: Path) -> None:
    """Without IMAGE_ORIGIN_CDN_BASE_URL the documents' URLs follow the request's Host header
    (werkzeug trusts it); set it in production, as SECURITY.md says, and they cannot be steered."""
    with gunicorn(
        data_dir, workers=1, IMAGE_ORIGIN_CDN_BASE_URL="https://cdn.example.com"
    ) as server:
        r = requests.post(
            f"{server.url}/v1/images",
            data=images.jpeg(seed=710),
            headers={**auth(), "Host": "evil.example", "X-Forwarded-Host": "evil.example"},
            timeout=30,
        )
        assert r.status_code == 201
        assert "evil" not in r.text and r.json()["urls"]["original"].startswith(
            "https://cdn.example.com/"
        )
        config = requests.get(
            f"{server.url}/v1/config", headers={"Host": "evil.example"}, timeout=10
        )
        assert config.json()["cdn_base_url"] == "https://cdn.example.com"
