"""gunicorn's own refusals, straight from a running gunicorn (no nginx in front, as `make run`
serves): JSON in the API's error shape with nosniff, never gunicorn's HTML page."""

from __future__ import annotations

import json
import socket

import pytest

from app.gunicorn_errors import json_error
from tests.live import LiveServer


def _raw(live: LiveServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-F%d: v\r\n" % i for i in range(120))
            + b"\r\n",
            431,
            "request_header_fields_too_large",
        ),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n", 400, "bad_request"),
        (b"NOT A REQUEST LINE\r\n\r\n", 400, "bad_request"),
    ],
    ids=["request line too long", "too many header fields", "bad header name", "garbage"],
)
def test_gunicorn_refusals_are_json(live: LiveServer, request_bytes, status, code) -> None:
    got, headers, body = _raw(live, request_bytes)
    assert got == status, body[:300]
    assert headers["content-type"] == "application/json"
    assert headers["x-content-type-options"] == "nosniff"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body)["error"]["code"] == code
    assert b"<html" not in body.lower()


def test_json_error_quotes_input_safely() -> None:
    raw = json_error(400, "Bad Request", 'Invalid header "<script>\u00e9' + "x" * 500)
    head, _, body = raw.partition(b"\r\n\r\n")
    doc = json.loads(body)
    assert doc["error"]["code"] == "bad_request"
    assert len(doc["error"]["message"]) <= 200 and body.isascii()
    assert b"Content-Length: %d" % len(body) in head
