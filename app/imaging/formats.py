"""Source types by magic bytes: the allowlist every decode goes through.

The type of an upload is decided by libmagic over its first bytes, never by the client's
Content-Type or file name, and the result also picks the *only* Pillow decoder allowed to open
it (``Image.open(..., formats=[pil_format])``). That keeps Pillow's many other, less hardened
plugins (TIFF, EPS, PSD, ...) out of reach of hostile input.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import BinaryIO

import magic

from app.errors import UnsupportedMediaType

# libmagic needs far less than this for every allowed type; 4 KiB also covers JPEGs whose
# first marker is preceded by padding.
SNIFF_BYTES = 4096


@dataclass(frozen=True)
class SourceFormat:
    """An allowed source type: its MIME type, the Pillow decoder name and a file extension."""

    mime: str
    pil_format: str
    extension: str


REGISTRY: dict[str, SourceFormat] = {
    f.mime: f
    for f in (
        SourceFormat("image/jpeg", "JPEG", "jpg"),
        SourceFormat("image/png", "PNG", "png"),
        SourceFormat("image/gif", "GIF", "gif"),
        SourceFormat("image/webp", "WEBP", "webp"),
    )
}

# A Magic handle holds libmagic state that must not be used by two threads at once; one per
# thread avoids both the race and lock contention between gunicorn threads.
_local = threading.local()


def _magic() -> magic.Magic:
    handle = getattr(_local, "magic", None)
    if handle is None:
        handle = _local.magic = magic.Magic(mime=True)
    return handle


def detect_mime(head: bytes) -> str:
    """libmagic's MIME type for the first bytes of a file (``application/x-empty`` if none)."""
    if not head:
        return "application/x-empty"
    try:
        return str(_magic().from_buffer(head[:SNIFF_BYTES]))
    except Exception:  # libmagic errors on odd input: treat as unknown, never crash
        return "application/octet-stream"


def sniff(head: bytes) -> SourceFormat:
    """The allowed source format for these leading bytes, else UnsupportedMediaType (415)."""
    mime = detect_mime(head)
    fmt = REGISTRY.get(mime)
    if fmt is None:
        allowed = ", ".join(sorted(REGISTRY))
        raise UnsupportedMediaType(f"file type {mime} is not allowed (allowed: {allowed})")
    return fmt


def sniff_stream(stream: BinaryIO) -> SourceFormat:
    """Sniff a seekable binary stream from its start; leaves the position at 0."""
    stream.seek(0)
    head = stream.read(SNIFF_BYTES)
    stream.seek(0)
    return sniff(head)


def sniff_file(path: str) -> SourceFormat:
    """Sniff a file on disk by its first bytes."""
    with open(path, "rb") as fh:
        return sniff(fh.read(SNIFF_BYTES))
