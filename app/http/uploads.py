"""Reading an upload into a staging file: multipart ``file`` field or the raw body.

Flask's request parses multipart bodies through ``_get_file_stream``; returning a StagingFile
there makes file parts stream straight into the hashing staging file, so no upload is ever held
whole in memory and the size limit stops reading as soon as it is passed.

A raw body is read from the WSGI server's own input stream when the server terminates it
(``wsgi.input_terminated``: gunicorn stops at Content-Length or the last chunk).
werkzeug's ``request.stream`` wraps that stream once more only to enforce
``MAX_CONTENT_LENGTH``, which the staging file enforces exactly anyway; the wrapper's extra
copies were a measurable part of a duplicate upload's time. Servers that do not terminate the
stream (werkzeug's test client and dev server) keep getting ``request.stream``.

Under gunicorn, a body with a Content-Length is read from the connection's socket itself
(``GunicornSocketBody``): ``recv_into`` the staging file's buffers instead of gunicorn's
reader, which copies every byte through several BytesIO buffers and slices (9 to 12 ms of a
10 MB upload, against 4 to 5 ms for the recv_into alone).
"""

from __future__ import annotations

import contextlib
import io
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import IO, Any

from flask import Request, current_app, g, request

from app.errors import BadRequest, MissingFile, PayloadTooLarge
from app.staging import StagingFile

MAX_FILENAME = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Unicode categories dropped from display names: controls (C0 and C1), format characters
# (bidi overrides such as U+202E that make "gpj.exe" read "exe.jpg", zero-width joiners),
# lone surrogates (not encodable: PostgreSQL and JSON encoders reject them), line and
# paragraph separators (they break log lines and headers).
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


# werkzeug reads a multipart body in chunks of this size (FormDataParser.buffer_size).
MULTIPART_CHUNK = 64 * 1024


class OriginRequest(Request):
    # Non-file form fields are tiny (filename, private); keep the parser's memory small. But
    # werkzeug's multipart decoder applies this limit to its raw buffer too, file parts
    # included: one read chunk plus the tail it holds back while looking for the boundary. At
    # exactly one chunk (64 KiB), every multipart upload larger than that was refused with 413.
    max_form_memory_size = 2 * MULTIPART_CHUNK
    max_form_parts = 16

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        staging = current_app.config["IMAGE_ORIGIN"].service.new_staging_file()
        g.setdefault("staging_files", []).append(staging)
        return staging  # type: ignore[return-value]


@dataclass
class Upload:
    staged: StagingFile
    filename: str | None
    private: bool


def read_upload() -> Upload:
    if request.mimetype == "multipart/form-data":
        return _from_multipart()
    return _from_raw_body()


def _from_multipart() -> Upload:
    storage = request.files.get("file")
    if storage is None or not isinstance(storage.stream, StagingFile):
        raise MissingFile("multipart field 'file' is required")
    staged: StagingFile = storage.stream
    if staged.size == 0:
        raise MissingFile("the file is empty")
    filename = request.form.get("filename") or storage.filename
    return Upload(staged, clean_filename(filename), parse_bool(request.form.get("private")))


def _from_raw_body() -> Upload:
    private = parse_bool(request.args.get("private"))
    filename = clean_filename(request.headers.get("X-Filename"))
    declared = request.content_length
    ceiling = request.max_content_length
    if declared is not None and ceiling is not None and declared > ceiling:
        # What werkzeug's request.stream answers before reading a byte; a body declared between
        # the upload limit and this ceiling is read up to the limit and refused there. Either
        # way the 413 handler reads the rest first (``drain_refused_body``).
        raise PayloadTooLarge("the upload is larger than the limit")
    staged = current_app.config["IMAGE_ORIGIN"].service.new_staging_file()
    g.setdefault("staging_files", []).append(staged)
    staged.copy_from(_body_stream())
    if declared is not None and staged.size < declared:
        # The body ended early: the client went away mid-upload (gunicorn's reader reports
        # that as end of body). A prefix of an image can still decode (a PNG without its last
        # chunks), so it must never be stored as the upload.
        raise BadRequest(
            f"the request body ended after {staged.size} of {declared} bytes",
            code="incomplete_body",
        )
    if staged.size == 0:
        raise MissingFile("the request body is empty; send the image bytes or a 'file' field")
    return Upload(staged, filename, private)


def _body_stream() -> IO[bytes] | io.RawIOBase:
    """The raw body: gunicorn's socket, else the server's terminated input stream, else
    werkzeug's guarded one."""
    environ = request.environ
    if environ.get("wsgi.input_terminated") and environ.get("wsgi.input") is not None:
        return GunicornSocketBody.of(environ) or environ["wsgi.input"]
    return request.stream


class GunicornSocketBody(io.RawIOBase):
    """A Content-Length body read with ``recv_into`` from gunicorn's socket.

    gunicorn's ``wsgi.input`` is ``Body(LengthReader(SocketUnreader))``. This reads what that
    reader would have returned, in the same order, and keeps its state true so gunicorn's own
    drain and keep-alive handling work unchanged: bytes its unreader already received (the
    start of the body, read with the headers) come first, and anything past the body in that
    buffer (a pipelined request) stays there; ``LengthReader.length`` counts down every byte
    taken, so after a refusal (413) gunicorn drains exactly the unread rest; a socket error
    marks the body failed, as gunicorn's reader does, so the connection is not reused. It
    never reads past the body. ``of`` returns None for anything else (another server,
    another gunicorn whose reader is built differently, a chunked body, a body already read
    from): those are read through ``wsgi.input``.
    """

    def __init__(self, body: Any, reader: Any, sock: Any, head: bytes) -> None:
        super().__init__()
        self._body = body
        self._reader = reader
        self._recv_into = sock.recv_into
        self._head = memoryview(head)

    @classmethod
    def of(cls, environ: dict[str, Any]) -> GunicornSocketBody | None:
        try:
            from gunicorn.http.body import Body, LengthReader
            from gunicorn.http.unreader import SocketUnreader
        except ImportError:
            return None
        body = environ.get("wsgi.input")
        sock = environ.get("gunicorn.socket")
        reader = getattr(body, "reader", None)
        unreader = getattr(reader, "unreader", None)
        if (
            type(body) is not Body
            or type(reader) is not LengthReader
            or type(unreader) is not SocketUnreader
            or getattr(unreader, "sock", None) is not sock
            or not hasattr(sock, "recv_into")
            or not isinstance(getattr(reader, "length", None), int)
            or not isinstance(getattr(body, "buf", None), io.BytesIO)
            or body.buf.getvalue()
            or not isinstance(getattr(unreader, "buf", None), io.BytesIO)
        ):
            return None
        buffered = unreader.buf.getvalue()
        head, rest = buffered[: reader.length], buffered[reader.length :]
        unreader.buf = io.BytesIO()
        unreader.buf.write(rest)
        reader.length -= len(head)
        return cls(body, reader, sock, head)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = len(buffer)
        if self._head:
            n = min(want, len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        want = min(want, self._reader.length)
        if want <= 0:
            return 0
        try:
            n: int = self._recv_into(buffer, want)
        except BaseException:
            self._body.failed = True
            raise
        self._reader.length -= n
        return n


# A refused upload's body is still read to its end (and thrown away) when it is at most this much
# over the ceiling (``MAX_CONTENT_LENGTH``: the limit plus the multipart envelope). nginx streams
# bodies up to the limit plus its own 1 MiB slack (nginx/render.py) to the app; gunicorn drains
# at most 64 KiB of a body the app left unread, then closes the connection with the rest still
# in flight, and nginx, failing its write with EPIPE, then often answers 502 instead of passing
# our 413 on. A body declared larger than this is not coming through that proxy: it is refused
# at once, and its connection closed.
REFUSED_BODY_DRAIN = 2 * 1024 * 1024
DRAIN_CHUNK = 64 * 1024
# ... and within this many seconds (gunicorn's own drain deadline): a client that stops sending
# a refused body must not hold a request thread.
DRAIN_SECONDS = 5.0


def drain_refused_body() -> None:
    """Before a 413 leaves: read what is left of the body, within REFUSED_BODY_DRAIN and
    DRAIN_SECONDS, so the connection stays in step (and a proxy in front sees the answer, not
    a reset). Only under a server that terminates the input stream (gunicorn); nothing read
    here is kept."""
    environ = request.environ
    stream = environ.get("wsgi.input")
    if not environ.get("wsgi.input_terminated") or stream is None:
        return
    ceiling = request.max_content_length or 0
    declared = request.content_length
    if declared is not None and declared > ceiling + REFUSED_BODY_DRAIN:
        return
    sock = environ.get("gunicorn.socket")
    if sock is None or not hasattr(sock, "settimeout"):
        return  # no way to bound the wait: leave the rest to the server
    budget = ceiling + REFUSED_BODY_DRAIN
    deadline = time.monotonic() + DRAIN_SECONDS
    prior = sock.gettimeout()
    try:
        while budget > 0 and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = stream.read(min(DRAIN_CHUNK, budget))
            if not chunk:
                break
            budget -= len(chunk)
    except Exception:  # timed out, gone, or a broken chunk: the server closes the connection
        return
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(prior)


def parse_bool(raw: Any) -> bool:
    if raw is None or raw == "":
        return False
    value = str(raw).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise BadRequest("private must be true or false", code="invalid_private")


def clean_filename(raw: str | None) -> str | None:
    """Keep a display name only: directories stripped, control and format characters dropped,
    bounded. Never used to build a path: blobs are named by their hash."""
    if not raw:
        return None
    base = raw.replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(c for c in base if unicodedata.category(c) not in _DROPPED_CATEGORIES)
    name = _CONTROL.sub("", kept).strip()
    return name[:MAX_FILENAME].strip() or None


def discard_staging(_exc: BaseException | None = None) -> None:
    for staged in g.pop("staging_files", []):
        staged.discard()
