"""The reference document of API.md, built from records and the public base URL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import current_app, request

from app.metadata import ObjectRecord, ReferenceRecord
from app.settings import FORMATS, Settings


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def base_url(settings: Settings) -> str:
    return (settings.cdn_base_url or request.host_url).rstrip("/")


def srcset_widths(settings: Settings, source_width: int) -> list[int]:
    """Widths not wider than the source (never upscaled), or the smallest when all are."""
    fitting = [w for w in settings.widths if w <= source_width]
    return fitting or [min(settings.widths)]


def reference_document(
    ref: ReferenceRecord, obj: ObjectRecord, *, deduplicated: bool | None = None
) -> dict[str, Any]:
    settings: Settings = current_app.config["IMAGE_ORIGIN"].settings
    base = base_url(settings)
    root = f"{base}/{obj.hash}"
    widths = srcset_widths(settings, obj.width)
    doc: dict[str, Any] = {
        "id": ref.id,
        "hash": obj.hash,
        "storage_key": obj.storage_key,
        "owner": ref.owner,
        "original_filename": ref.original_filename,
        "mime_type": obj.mime_type,
        "size": obj.size,
        "width": obj.width,
        "height": obj.height,
        "private": ref.private,
        "created_at": rfc3339(ref.created_at),
        "ref_count": obj.ref_count,
        "urls": {"original": f"{root}/original", **{f: f"{root}/{f}/high" for f in FORMATS}},
        "srcset": {f: ", ".join(f"{root}/{f}/high/{w} {w}w" for w in widths) for f in FORMATS},
    }
    if deduplicated is not None:
        doc["deduplicated"] = deduplicated
    if ref.deleted_at is not None:
        doc["deleted_at"] = rfc3339(ref.deleted_at)
    return doc


def object_document(obj: ObjectRecord, variants: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "hash": obj.hash,
        "storage_key": obj.storage_key,
        "mime_type": obj.mime_type,
        "size": obj.size,
        "width": obj.width,
        "height": obj.height,
        "ref_count": obj.ref_count,
        "private": obj.private,
        "tier": obj.tier,
        "created_at": rfc3339(obj.created_at),
        "last_accessed_at": rfc3339(obj.last_accessed_at),
        "deleted_at": rfc3339(obj.deleted_at),
        "integrity_failed_at": rfc3339(obj.integrity_failed_at),
        "blob_missing_at": rfc3339(obj.blob_missing_at),
        "variants": variants,
    }
