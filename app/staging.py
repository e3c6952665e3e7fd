"""Uploads land in a staging file, hashed while they are written, never held whole in memory.

The staging folder is private to the data dir; each upload gets a file with an unguessable name,
and ``discard`` ends it on every path (success, dedup, error, disconnect): a file that failed is
removed, a finished one becomes a spare for the next upload for a few seconds (see
app.staging_spares: writing over a file's pages is about 6x cheaper than into a new file).
A worker killed mid-upload (SIGKILL, OOM) cannot discard: its files are named
``upload-<host>-<pid>-<random>`` (and ``spare-...``), so the next worker that starts on this host
removes the files of processes that no longer exist (``clean_staging``); files of other hosts
sharing the folder are left to the age limit.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import queue
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

from app.errors import InsufficientStorage, PayloadTooLarge, Unavailable
from app.staging_spares import SPARE_PREFIX, SPARES

# Size of each read from the request body, and of each hand-off to the hash and write stages (a
# body read from the socket fills a whole CHUNK before it moves on). Where the body comes through
# gunicorn's reader instead: it blocks until it holds the whole read, copying it through a few
# BytesIO buffers on the way, and it receives up to 1 MiB per recv(): reads smaller than that
# copy what is left of each recv() again on every call. Timed through gunicorn's reader on a
# 10 MB body: 128 KiB 12.6 ms, 256 KiB (the old size) 8.5 ms, 512 KiB 7.4 ms, 1 MiB 7.8 ms,
# 4 MiB 13.8 ms.
CHUNK = 512 * 1024
# Chunks of one upload in flight between reading and its hash and write stages (``copy_from``): a
# large upload holds about DEPTH * CHUNK (2 MiB) in memory at once, whatever its size.
DEPTH = 4
# Buffers of finished uploads, kept for the next ones (at most KEEP_BUFFERS per process): a fresh
# 512 KiB bytearray is zeroed and page-faulted in on every upload, since glibc hands blocks that
# large back to the kernel when they are freed (430 page faults per 10 MB upload, ~1.5 ms).
KEEP_BUFFERS = 2 * DEPTH
_spare_buffers: list[memoryview] = []
PREFIX = "upload-"
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


class StagingFile:
    """A write-once temp file that hashes and counts what passes through it."""

    def __init__(self, directory: Path, limit: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.limit = limit
        self.size = 0
        self.path = str(directory / _name(PREFIX))
        self._hash = hashlib.sha256()
        # A spare holds an earlier upload's bytes: written over from offset 0, then cut to
        # what this upload wrote in ``finish``. Until then nothing reads the file.
        self._reused = False
        self._finished = False
        try:
            fd = self._open_spare()
            if fd is None:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise self._storage_error(exc) from exc
        self._fh: BinaryIO | None = os.fdopen(fd, "wb")

    def _open_spare(self) -> int | None:
        """A spare of this folder renamed to ``self.path`` and opened, or None."""
        spare = SPARES.take(self.directory)
        if spare is None:
            return None
        try:
            os.rename(spare, self.path)
        except FileNotFoundError:
            return None  # removed meanwhile (the age limit of another host's clean_staging)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(spare)
            return None
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            return None
        self._reused = True
        return fd

    # File-like surface so werkzeug's multipart parser can write into it directly.
    def write(self, data: bytes) -> int:
        if self._fh is None:
            raise ValueError("staging file closed")
        self._count(len(data))
        self._hash.update(data)
        try:
            return self._fh.write(data)
        except OSError as exc:
            raise self._storage_error(exc) from exc

    def seek(self, offset: int, whence: int = 0) -> int:
        # werkzeug seeks to 0 after writing a file part; our data is already hashed.
        return 0

    def tell(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:  # pragma: no cover - never read back through here
        return b""

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def copy_from(self, stream: IO[bytes] | io.RawIOBase) -> None:
        """Read ``stream`` in chunks until EOF or the limit, whichever comes first.

        No read asks for more than one byte past the limit: that byte proves the upload too
        large, so reading stops as soon as the limit is passed, whatever CHUNK is.

        A raw stream (``io.RawIOBase``: the request's socket, see app.http.uploads) is read
        with ``readinto`` into at most DEPTH reused buffers, each filled whole before it
        moves on; any other stream with ``read``. Once a chunk comes back full (a large
        upload), hashing and writing move to a thread each (``_Stage``) and overlap with
        reading the next chunks: SHA-256 alone takes about as long as receiving the body.
        """
        raw = stream if isinstance(stream, io.RawIOBase) else None
        pool: list[memoryview] = []  # raw: buffers free to be filled again
        in_flight: deque[memoryview] = deque()  # raw: buffers submitted, oldest first
        buffers = 0
        stages: tuple[_Stage, ...] = ()
        error: BaseException | None = None
        try:
            while True:
                want = min(CHUNK, self.limit - self.size + 1)
                buf: memoryview | None = None
                if raw is None:
                    chunk: bytes | memoryview = stream.read(want)  # type: ignore[union-attr]
                else:
                    if not pool and buffers < DEPTH:
                        pool.append(_take_buffer())
                        buffers += 1
                    elif not pool:
                        assert stages  # every buffer is in flight
                        _oldest_done(stages)
                        pool.append(in_flight.popleft())
                    buf = pool.pop()
                    chunk = buf[: _fill(raw, buf[:want])]
                if not chunk:
                    break
                if not stages and len(chunk) == CHUNK:
                    stages = (
                        _Stage(self._hash.update, "upload-hash"),
                        _Stage(self._write_file, "upload-write"),
                    )
                if not stages:
                    self.write(chunk)
                    if buf is not None:
                        pool.append(buf)
                    continue
                for stage in stages:
                    if stage.failed is not None:
                        raise stage.failed  # a full disk: stop reading now
                if raw is None and stages[0].pending == DEPTH:
                    _oldest_done(stages)  # bound what is in flight
                self._count(len(chunk))
                for stage in stages:
                    stage.submit(chunk)
                if buf is not None:
                    in_flight.append(buf)
        finally:
            # On every path (413, a full disk, a reset): the threads are done with our buffers,
            # and the file may be discarded, once this returns.
            for stage in stages:
                error = stage.close() or error
            for buf in (*pool, *in_flight):
                _give_buffer(buf)
        if error is not None:
            raise error

    def _count(self, n: int) -> None:
        self.size += n
        if self.size > self.limit:
            raise PayloadTooLarge(f"upload exceeds the limit of {self.limit} bytes")

    def _write_file(self, data: bytes | memoryview) -> None:
        """``write`` without the hash update (the hash stage makes it)."""
        if self._fh is None:
            raise ValueError("staging file closed")
        try:
            self._fh.write(data)
        except OSError as exc:
            raise self._storage_error(exc) from exc

    def finish(self) -> str:
        """Close and return the hex SHA-256 of what was written; from here on the file holds
        exactly those bytes (a reused spare is cut to this upload's size)."""
        if self._fh is not None:
            try:
                self._fh.flush()
                self._fh.close()
                self._fh = None
                if self._reused:
                    os.truncate(self.path, self.size)
            except OSError as exc:
                raise self._storage_error(exc) from exc
            self._finished = True
        return self._hash.hexdigest()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()

    def discard(self) -> None:
        """Close, then keep a finished file as a spare or remove it, whatever state it is in;
        never raises for a full disk (closing flushes the buffer, which fails again on ENOSPC).
        Every reader of the file (the decode check, the blob store) is done by now: the
        upload that staged it has answered."""
        with contextlib.suppress(OSError):
            self.close()
        if self._finished:
            spare = str(self.directory / _name(SPARE_PREFIX))
            if SPARES.keep(self.directory, self.path, self.size, spare):
                self._finished = False  # the spare is the pool's now, whoever discards again
                return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _storage_error(self, exc: OSError) -> Exception:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            SPARES.drop(self.directory)  # their blocks may let the next upload through
        return _storage_error(exc)


def _name(prefix: str) -> str:
    """``<prefix><host>-<pid>-<random>``: unguessable, and ``clean_staging`` can tell whose."""
    return f"{prefix}{HOST_TAG}-{os.getpid()}-{secrets.token_hex(12)}"


def _take_buffer() -> memoryview:
    try:
        return _spare_buffers.pop()  # atomic under the GIL, like append
    except IndexError:
        return memoryview(bytearray(CHUNK))


def _give_buffer(buf: memoryview) -> None:
    if len(_spare_buffers) < KEEP_BUFFERS:
        _spare_buffers.append(buf)


def _oldest_done(stages: tuple[_Stage, ...]) -> None:
    """Wait until the oldest chunk in flight is through every stage."""
    for stage in stages:
        stage.done()


def _fill(stream: io.RawIOBase, buf: memoryview) -> int:
    """``readinto`` until ``buf`` is full or the stream ends; returns how many bytes came.
    A socket returns what has arrived (often 64 KiB); a chunk filled whole makes one
    hand-off to the stages and one write per CHUNK instead of one per recv()."""
    got = 0
    while got < len(buf):
        n = stream.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


class _Stage:
    """One step applied to every chunk of an upload, on a thread of its own, in order.

    An upload has two: the SHA-256 update and the write to the staging file. hashlib releases
    the GIL while it hashes a large buffer, and so does a file write, so both run beside the
    receiving of the next chunks (a 9.8 MB duplicate: receiving, hashing and writing 12.8 ->
    11.3 ms with the write on its own thread instead of the receiving one). ``done`` waits for
    the oldest chunk not yet waited for (its buffer may then be filled again), ``close`` for
    all of them. After a failure the stage skips the rest; ``failed`` says so at once, so a
    full disk stops the upload without reading the rest of its body.
    """

    def __init__(self, step: Callable[[bytes | memoryview], object], name: str) -> None:
        self._step = step
        self._todo: queue.SimpleQueue[bytes | memoryview | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.pending = 0  # submitted and not yet waited for by done()
        self.failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._todo.get()) is not None:
            if self.failed is None:
                try:
                    self._step(chunk)
                except BaseException as exc:  # handed to the request thread
                    self.failed = exc
            self._done.put(None)

    def submit(self, chunk: bytes | memoryview) -> None:
        self.pending += 1
        self._todo.put(chunk)

    def done(self) -> None:
        """Wait until the oldest chunk not yet waited for has been through the step."""
        self._done.get()
        self.pending -= 1

    def close(self) -> BaseException | None:
        """Wait until everything submitted is through; returns what the step raised, if any."""
        self._todo.put(None)
        self._thread.join()
        return self.failed


def _storage_error(exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage("no space left to stage the upload")
    return Unavailable("cannot stage the upload", code="staging_unavailable")


def clean_staging(directory: Path, older_than: float = 0.0) -> int:
    """Remove staging files left by crashed workers; returns how many were removed.

    With ``older_than`` <= 0 every staging file goes (gunicorn's master, before any worker).
    Otherwise a file goes when it is older than that, or when it belongs to a process of this
    host that no longer exists (a worker killed mid-upload; its successor cleans up at start).
    """
    if not directory.is_dir():
        return 0
    removed = 0
    cutoff = time.time() - older_than
    for entry in os.scandir(directory):
        if not entry.name.startswith((PREFIX, SPARE_PREFIX)):
            continue
        if not entry.is_file(follow_symlinks=False):
            continue
        try:
            if older_than <= 0 or _owner_gone(entry.name) or entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def _owner_gone(name: str) -> bool:
    """True if ``name`` was staged by a process of this host that has exited."""
    prefix = SPARE_PREFIX if name.startswith(SPARE_PREFIX) else PREFIX
    host, _, rest = name[len(prefix) :].partition("-")
    pid_text, _, _ = rest.partition("-")
    if host != HOST_TAG or not pid_text.isascii() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, owned by someone else
        return False
    return False
