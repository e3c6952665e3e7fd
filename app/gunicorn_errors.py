"""gunicorn's own error answers in the API's JSON shape, with ``nosniff``.

gunicorn refuses malformed requests (a request line over ``limit_request_line``, too many or too
large header fields, bad chunking) before the app sees them, with a small HTML page of its own.
Every error of this service is JSON (API.md) and nothing here serves HTML, so the config file
swaps gunicorn's page writer (``gunicorn.util.write_error``, which every worker's
``handle_error`` calls with the status, reason and message it chose) for this one. gunicorn
still decides which requests to refuse and with which status; only the body changes.
"""

from __future__ import annotations

import json
import re
import socket
from typing import Any

from gunicorn import util

_NOT_WORD = re.compile(r"[^a-z0-9]+")
MAX_MESSAGE = 200  # gunicorn's messages quote the offending input; keep the answer small


def json_error(status: int, reason: str, message: str) -> bytes:
    """The whole HTTP response: ``{"error": {"code", "message"}}``, connection closed."""
    code = _NOT_WORD.sub("_", reason.lower()).strip("_") or "bad_request"
    text = message if message else reason
    body = json.dumps(
        {"error": {"code": code, "message": text[:MAX_MESSAGE]}}, ensure_ascii=True
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Cache-Control: no-store\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Drop-in for ``gunicorn.util.write_error`` (same arguments)."""
    util.write_nonblock(sock, json_error(int(status_int), str(reason), str(mesg)))


def install(target: Any = util) -> None:
    """Make gunicorn (in this process and the workers it forks) answer its errors as JSON."""
    target.write_error = write_json_error
