"""Blob storage: pick a backend by the URL scheme of ``settings.resolved_storage_url``.

A plain dict of scheme -> factory (never dotted import paths), so the set of backends is visible
here and a typo in a URL fails at start-up with the list of schemes that exist.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from app.settings import Settings
from app.storage.base import ArchivedError, BlobInfo, BlobStore, NotFound, StorageError
from app.storage.local import LocalBlobStore


def _local(url: str, settings: Settings) -> BlobStore:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise StorageError(f"file URL must be file:///absolute/path, got host {parts.netloc!r}")
    return LocalBlobStore(Path(unquote(parts.path)), cold_root=settings.resolved_cold_dir)


def _s3(url: str, settings: Settings) -> BlobStore:
    # Imported here: boto3 costs ~10 MB per worker, which a local-disk deployment never needs.
    from app.storage.s3 import S3BlobStore

    parts = urlsplit(url)
    if not parts.netloc:
        raise StorageError("s3 URL must be s3://bucket[/prefix]")
    return S3BlobStore(
        parts.netloc,
        prefix=unquote(parts.path).strip("/"),
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        cold_storage_class=settings.cold_storage_class,
    )


BACKENDS: dict[str, Callable[[str, Settings], BlobStore]] = {"file": _local, "s3": _s3}


def open_blob_store(settings: Settings) -> BlobStore:
    """The BlobStore named by the settings' storage URL."""
    url = settings.resolved_storage_url
    scheme = urlsplit(url).scheme
    factory = BACKENDS.get(scheme)
    if factory is None:
        known = ", ".join(sorted(BACKENDS))
        raise StorageError(f"unknown storage scheme {scheme!r} (known: {known})")
    return factory(url, settings)


__all__ = [
    "BACKENDS",
    "ArchivedError",
    "BlobInfo",
    "BlobStore",
    "LocalBlobStore",
    "NotFound",
    "StorageError",
    "open_blob_store",
]
