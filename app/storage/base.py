"""The BlobStore protocol: bytes by key, nothing else.

Keys are validated strings (see ``app.storage.keys``) so that no backend ever builds a path or an
object name from unvalidated input. Every backend turns its own "missing" error into ``NotFound``
so the service never has to know which backend it talks to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO, Protocol, runtime_checkable

# S3 storage classes that must be restored before a GET can read them.
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})


class StorageError(Exception):
    """The backend failed in a way the caller cannot fix (network, disk, permissions)."""


class NotFound(StorageError):
    """No blob under this key."""


class ArchivedError(StorageError):
    """The blob exists but sits in an archive tier and must be restored before reading."""

    def __init__(self, key: str, restoring: bool = False) -> None:
        super().__init__(key)
        self.key = key
        self.restoring = restoring


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    last_modified: datetime
    storage_class: str | None = None


@runtime_checkable
class BlobStore(Protocol):
    """Bytes by key. Writes are atomic and idempotent; reads stream."""

    def put_file(
        self,
        key: str,
        path: str,
        sha256_hex: str | None = None,
        *,
        alongside: Callable[[], object] | None = None,
    ) -> bool:
        """Store the file at ``path`` under ``key``; True if written, False if already there.

        ``sha256_hex``: refuse (StorageError, nothing stored) bytes that do not hash to it.
        ``alongside``: work of the caller's (a check of the content) that the store runs at
        most once, in the calling thread, wherever it hides best (local disk: during the
        fsync); if it raises, nothing is stored and its error is raised. True means it ran
        and passed; after False or a StorageError it may not have run (the key was there, or
        the write failed first), and a caller that needs it runs it itself.
        """

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Store ``data`` under ``key``, replacing anything there (variants are deterministic)."""

    def open(self, key: str) -> BinaryIO:
        """A readable stream of the blob; raises NotFound or ArchivedError."""

    def get_bytes(self, key: str) -> bytes:
        """The whole blob; for small blobs such as variants."""

    def exists(self, key: str) -> bool: ...

    def info(self, key: str) -> BlobInfo:
        """Size, modification time and storage class; raises NotFound."""

    def delete(self, key: str) -> None:
        """Remove the blob; a missing blob is not an error."""

    def iter_blobs(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Every blob whose key starts with ``prefix``, in any order, streaming."""

    def ping(self) -> None:
        """Raise StorageError when the backend is unreachable."""


def durable_batch(blobs: Any) -> AbstractContextManager[None]:
    """The store's ``durable_batch()`` if it has one (local disk: directory fsyncs once per
    batch), else a block that changes nothing (S3: each request is durable when it returns)."""
    batch = getattr(blobs, "durable_batch", None)
    return batch() if batch is not None else contextlib.nullcontext()
