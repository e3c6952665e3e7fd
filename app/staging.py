"""Uploads land in a staging file, hashed while they are written, never held whole in memory.

The staging folder is private to the data dir; each upload gets a file with an unguessable name,
and the file is removed on every path (success, dedup, error, disconnect) by ``discard``.
A worker killed mid-upload (SIGKILL, OOM) cannot discard: its file is named
``upload-<host>-<pid>-<random>``, so the next worker that starts on this host removes the files
of processes that no longer exist (``clean_staging``); files of other hosts sharing the folder
are left to the age limit.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import socket
import time
from pathlib import Path
from typing import IO, BinaryIO

from app.errors import InsufficientStorage, PayloadTooLarge, Unavailable

# Size of each read from the request body. gunicorn's body reader blocks until it holds the whole
# read, copying it through a few BytesIO buffers on the way, and it receives up to 1 MiB per
# recv(): reads smaller than that copy what is left of each recv() again on every call. Timed
# through gunicorn's reader on a 10 MB body: 128 KiB 12.6 ms, 256 KiB (the old size) 8.5 ms,
# 512 KiB 7.4 ms, 1 MiB 7.8 ms, 4 MiB 13.8 ms.
CHUNK = 512 * 1024
PREFIX = "upload-"
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


class StagingFile:
    """A write-once temp file that hashes and counts what passes through it."""

    def __init__(self, directory: Path, limit: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.limit = limit
        self.size = 0
        name = f"{PREFIX}{HOST_TAG}-{os.getpid()}-{secrets.token_hex(12)}"
        self.path = str(directory / name)
        self._hash = hashlib.sha256()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise _storage_error(exc) from exc
        self._fh: BinaryIO | None = os.fdopen(fd, "wb")

    # File-like surface so werkzeug's multipart parser can write into it directly.
    def write(self, data: bytes) -> int:
        if self._fh is None:
            raise ValueError("staging file closed")
        self.size += len(data)
        if self.size > self.limit:
            raise PayloadTooLarge(f"upload exceeds the limit of {self.limit} bytes")
        self._hash.update(data)
        try:
            return self._fh.write(data)
        except OSError as exc:
            raise _storage_error(exc) from exc

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

    def copy_from(self, stream: IO[bytes]) -> None:
        """Read ``stream`` in chunks until EOF or the limit, whichever comes first.

        No read asks for more than one byte past the limit: that byte proves the upload too
        large, so reading stops as soon as the limit is passed, whatever CHUNK is.
        """
        while True:
            chunk = stream.read(min(CHUNK, self.limit - self.size + 1))
            if not chunk:
                break
            self.write(chunk)

    def finish(self) -> str:
        """Close and return the hex SHA-256 of what was written."""
        if self._fh is not None:
            try:
                self._fh.flush()
                self._fh.close()
            except OSError as exc:
                raise _storage_error(exc) from exc
            self._fh = None
        return self._hash.hexdigest()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            fh.close()

    def discard(self) -> None:
        """Close and remove, whatever state the file is in; never raises for a full disk
        (closing flushes the buffer, which fails again on ENOSPC)."""
        with contextlib.suppress(OSError):
            self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


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
        if not entry.name.startswith(PREFIX) or not entry.is_file(follow_symlinks=False):
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
    host, _, rest = name[len(PREFIX) :].partition("-")
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
