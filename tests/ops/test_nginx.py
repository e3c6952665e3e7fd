"""The shipped nginx/nginx.conf, run by real nginx in front of a real gunicorn.

Proves: uploads stream through nginx to the app (request buffering off) and the body limit
matches the app's; image variants are cached at the edge (MISS then HIT, with X-Cache-Status and
a fresh X-Request-ID on hits); `auto` is cached per negotiated format class and nginx sends the
app a normalised Accept, so no client can poison another class; signed URLs are not kept at the
edge; forwarded headers are believed only as far as IMAGE_ORIGIN_TRUSTED_PROXIES.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from nginx.render import body_limit, render
from tests.conftest import auth
from tests.live import LiveServer, gunicorn
from tests.ops.conftest import sample_jpeg, upload_via
from tests.servers import NginxServer, nginx_server

MAX_UPLOAD = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def origin(module_data_dir: Path) -> Iterator[LiveServer]:
    with gunicorn(
        module_data_dir,
        workers=2,
        threads=4,
        IMAGE_ORIGIN_TRUSTED_PROXIES="1",
        IMAGE_ORIGIN_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
    ) as server:
        yield server


@pytest.fixture(scope="module")
def edge(origin: LiveServer) -> Iterator[NginxServer]:
    conf = render(
        listen="127.0.0.1:{{PORT}}",
        upstreams=[urlsplit(origin.url).netloc],
        state_dir="{{PREFIX}}",
        log_dir="{{PREFIX}}/logs",
        max_body=body_limit(MAX_UPLOAD),
    )
    with nginx_server(conf) as server:
        yield server


@pytest.fixture(scope="module")
def doc(edge: NginxServer) -> dict:
    return upload_via(edge.url, sample_jpeg(seed=11))


def get(url: str, **headers: str) -> requests.Response:
    return requests.get(url, headers=headers, timeout=30)


def test_upload_through_nginx_answers_with_edge_urls(edge: NginxServer, doc: dict) -> None:
    # ProxyFix (1 trusted proxy) makes the app build URLs for the host the client used.
    assert doc["urls"]["original"] == f"{edge.url}/{doc['hash']}/original"
    assert doc["srcset"]["webp"].startswith(f"{edge.url}/{doc['hash']}/webp/high/")
    again = upload_via(edge.url, sample_jpeg(seed=11))
    assert again["hash"] == doc["hash"] and again["deduplicated"] is True


def test_forged_forwarded_headers_are_not_believed(edge: NginxServer, origin: LiveServer) -> None:
    forged = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example", **auth()}
    forged["X-Forwarded-For"] = "203.0.113.9"
    forged["X-Request-ID"] = "forged-check-0001"
    r = requests.get(f"{edge.url}/v1/config", headers=forged, timeout=10)
    assert r.status_code == 200
    assert r.json()["cdn_base_url"] == edge.url  # nginx appended the real proto and host
    assert r.headers["X-Request-ID"] == "forged-check-0001"
    line = _access_log_line(origin, "forged-check-0001")
    assert line["remote"] == "127.0.0.1"  # the address nginx saw, not the forged one


def test_upload_body_is_streamed_to_the_app(edge: NginxServer, origin: LiveServer) -> None:
    """With proxy_request_buffering off the app starts staging before the body has arrived."""
    body = sample_jpeg(seed=12, width=1600, height=1200)
    staging = origin.data_dir / "staging"
    before = set(staging.glob("upload-*")) if staging.exists() else set()
    head = (
        f"POST /v1/images?private=false HTTP/1.1\r\nHost: 127.0.0.1:{edge.port}\r\n"
        f"Authorization: Bearer {auth()['Authorization'].split()[1]}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    half = len(body) // 2
    with socket.create_connection(("127.0.0.1", edge.port), timeout=30) as sock:
        sock.sendall(head + body[:half])
        deadline = time.monotonic() + 10
        while not (set(staging.glob("upload-*")) - before if staging.exists() else set()):
            assert time.monotonic() < deadline, "the app saw nothing before the body was complete"
            time.sleep(0.05)
        sock.sendall(body[half:])
        answer = _read_all(sock)
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 201 " in status_line, answer[:500]


def test_chunked_upload_through_nginx(edge: NginxServer) -> None:
    """A body without Content-Length (curl -T -, streaming clients) is passed on chunked."""
    data = sample_jpeg(seed=14)

    def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(data), 4096):
            yield data[i : i + 4096]

    r = requests.post(
        f"{edge.url}/v1/images",
        data=chunks(),
        headers={**auth(), "X-Filename": "chunked.jpg"},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    assert r.json()["size"] == len(data) and r.json()["original_filename"] == "chunked.jpg"


def test_body_limit_matches_the_app(edge: NginxServer) -> None:
    # Past nginx's limit (upload limit + multipart slack): nginx refuses from the headers alone,
    # in the API's JSON shape, without reading the body.
    too_big = MAX_UPLOAD + 2 * 1024 * 1024
    head = (
        f"POST /v1/images HTTP/1.1\r\nHost: 127.0.0.1:{edge.port}\r\n"
        f"Authorization: {auth()['Authorization']}\r\nContent-Length: {too_big}\r\n"
        "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", edge.port), timeout=30) as sock:
        sock.sendall(head)
        answer = _read_all(sock)
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 413"), answer[:300]
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    # Between the app's limit and nginx's: nginx streams it and the app refuses it with its
    # 413, having read the rest (else gunicorn closes mid-body and nginx answers 502 instead:
    # a race, so each shape goes through a few times).
    over = b"\xff\xd8\xff" + b"\0" * (MAX_UPLOAD + 100 * 1024)
    for attempt in range(4):
        for shape in ({"data": over}, {"files": {"file": ("big.jpg", over)}}):
            r = requests.post(f"{edge.url}/v1/images", headers=auth(), timeout=30, **shape)
            assert r.status_code == 413, (attempt, list(shape), r.status_code, r.text)
            assert r.json()["error"]["code"] == "payload_too_large"


def test_variant_second_get_is_an_edge_cache_hit(edge: NginxServer, doc: dict) -> None:
    url = f"{edge.url}/{doc['hash']}/webp/high/320"
    first = get(url, **{"X-Request-ID": "first-request-1"})
    second = get(url, **{"X-Request-ID": "second-request-2"})
    assert first.status_code == second.status_code == 200
    assert first.headers["X-Cache-Status"] == "MISS"
    assert second.headers["X-Cache-Status"] == "HIT"
    assert second.content == first.content and second.headers["ETag"] == first.headers["ETag"]
    assert second.headers["Content-Type"] == "image/webp"
    assert second.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    # a hit carries the id of the request that made it, not the one stored with the entry
    assert first.headers["X-Request-ID"] == "first-request-1"
    assert second.headers["X-Request-ID"] == "second-request-2"
    head = requests.head(url, timeout=10)
    assert head.headers["X-Cache-Status"] == "HIT" and head.content == b""
    original = get(f"{edge.url}/{doc['hash']}/original")
    assert original.headers["X-Cache-Status"] == "MISS"
    assert get(f"{edge.url}/{doc['hash']}/original").headers["X-Cache-Status"] == "HIT"


def test_auto_is_cached_per_negotiated_format(edge: NginxServer, doc: dict) -> None:
    url = f"{edge.url}/{doc['hash']}/auto/low/160"
    cases = [
        ("image/avif,image/webp,*/*;q=0.8", "image/avif", "MISS"),
        ("image/avif,image/webp,*/*;q=0.8", "image/avif", "HIT"),
        ("image/webp,*/*", "image/webp", "MISS"),
        ("image/webp,*/*", "image/webp", "HIT"),
        # explicit refusal of AVIF: the WebP class, already cached
        ("image/avif;q=0, image/webp;q=0.5", "image/webp", "HIT"),
        ("IMAGE/AVIF", "image/avif", "HIT"),  # media types are case-insensitive
        ("*/*", "image/jpeg", "MISS"),  # wildcards do not count
        ("image/*", "image/jpeg", "HIT"),
        ("text/html", "image/jpeg", "HIT"),
    ]
    for accept, content_type, cache in cases:
        r = get(url, Accept=accept)
        assert r.status_code == 200, accept
        assert (r.headers["Content-Type"], r.headers["X-Cache-Status"]) == (content_type, cache), (
            accept
        )
        assert r.headers["Vary"] == "Accept"
        assert r.content[:4] != b"" and len(r.content) == int(r.headers["Content-Length"])


def test_cache_cannot_be_poisoned_through_accept(edge: NginxServer) -> None:
    """nginx sends the app an Accept of exactly the class it keys on, so what is cached under a
    class is that class's format whatever header the first client sent. ``q=abc`` is where
    nginx's regex and the app's parser differ (the app ignores the malformed entry)."""
    fresh = upload_via(edge.url, sample_jpeg(seed=13))
    url = f"{edge.url}/{fresh['hash']}/auto/high/160"
    odd = get(url, Accept="image/avif;q=abc")
    assert (odd.headers["Content-Type"], odd.headers["X-Cache-Status"]) == ("image/avif", "MISS")
    real = get(url, Accept="image/avif,image/webp,*/*")
    assert (real.headers["Content-Type"], real.headers["X-Cache-Status"]) == ("image/avif", "HIT")
    other = get(url, Accept="image/avif-sequence, image/webpx, */*")
    assert (other.headers["Content-Type"], other.headers["X-Cache-Status"]) == (
        "image/jpeg",
        "MISS",
    )


def test_signed_urls_are_not_kept_at_the_edge(edge: NginxServer, doc: dict) -> None:
    r = requests.post(
        f"{edge.url}/v1/images/{doc['id']}/signed-url",
        json={"format": "jpeg", "quality": "low", "width": 160, "expires_in": 120},
        headers=auth(),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    signed = r.json()["url"]
    assert signed.startswith(f"{edge.url}/s/")
    for _ in range(2):
        got = get(signed)
        assert got.status_code == 200 and got.headers["Content-Type"] == "image/jpeg"
        assert "X-Cache-Status" not in got.headers
        max_age = int(got.headers["Cache-Control"].split("max-age=")[1])
        assert 0 < max_age <= 120
    tampered = signed.replace("/jpeg/low/160", "/jpeg/high/160")
    assert get(tampered).status_code == 403


def test_errors_and_other_routes_pass_uncached(edge: NginxServer) -> None:
    missing = "0" * 64
    for _ in range(2):
        r = get(f"{edge.url}/{missing}/webp/high/320")
        assert r.status_code == 404 and r.headers["X-Cache-Status"] == "MISS"
        assert r.json()["error"]["code"] == "not_found"
    assert get(f"{edge.url}/healthz").json() == {"status": "ok"}
    assert get(f"{edge.url}/readyz").status_code == 200
    assert get(f"{edge.url}/metrics").status_code == 200  # loopback may read it
    assert get(f"{edge.url}/openapi.json").json()["openapi"].startswith("3.1")


def _read_all(sock: socket.socket) -> bytes:
    """One HTTP response: the head, then Content-Length bytes (or up to the close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while length is None or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _access_log_line(server: LiveServer, request_id: str) -> dict:
    deadline = time.monotonic() + 5
    while True:
        for line in server.logs().splitlines():
            if line.startswith("{") and request_id in line:
                record = json.loads(line)
                if record.get("event") == "request" and record["request_id"] == request_id:
                    return record
        assert time.monotonic() < deadline, f"no access log line for {request_id}"
        time.sleep(0.1)


def test_nginx_own_errors_are_json_with_nosniff(edge: NginxServer, doc: dict) -> None:
    """Answers nginx makes itself (a header too large, an over-long URI) are JSON too, and
    every response carries exactly one nosniff header."""
    huge = get(f"{edge.url}/healthz", **{"X-Big": "x" * 20000})
    long_uri = get(f"{edge.url}/" + "a" * 20000)
    for r in (huge, long_uri):
        assert r.status_code == 400, (r.status_code, r.text[:300])
        assert r.headers["Content-Type"] == "application/json"
        assert r.json()["error"]["code"] == "bad_request"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    image = get(f"{edge.url}/{doc['hash']}/webp/high/160")
    assert image.raw.headers.getlist("X-Content-Type-Options") == ["nosniff"]


def test_what_nginx_lets_through_and_gunicorn_refuses_is_json(edge: NginxServer) -> None:
    """nginx's limits are looser than gunicorn's: a 5 KiB request line or 120 header fields
    pass nginx and are refused by gunicorn, whose answer is JSON too (app/gunicorn_errors.py)."""
    long_line = get(f"{edge.url}/" + "a" * 5000)
    many = requests.get(
        f"{edge.url}/healthz", headers={f"X-F{i}": "v" for i in range(120)}, timeout=30
    )
    for r, status in ((long_line, 414), (many, 431)):
        assert r.status_code == status, (r.status_code, r.text[:300])
        assert r.headers["Content-Type"] == "application/json"
        assert r.json()["error"]["code"] in ("uri_too_long", "request_header_fields_too_large")
        assert r.raw.headers.getlist("X-Content-Type-Options") == ["nosniff"]
        assert "<html" not in r.text.lower()
