"""SQL text and row mapping shared by the SQLite and PostgreSQL backends.

Statements use ``?`` placeholders; the PostgreSQL backend rewrites them to ``%s``. Every value
goes through a parameter: no statement is ever built from request data.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from app.metadata.base import DamageRecord, ObjectRecord, ReferenceRecord

OBJECT_COLUMNS = (
    "o.hash, o.mime_type, o.size, o.width, o.height, o.ref_count, o.created_at, "
    "o.last_accessed_at, o.deleted_at, o.tier, o.integrity_failed_at, o.blob_missing_at, "
    "o.gc_token, o.gc_lease_until"
)
SELECT_OBJECT = (
    f"SELECT {OBJECT_COLUMNS}, EXISTS (SELECT 1 FROM refs r WHERE r.hash = o.hash "  # noqa: S608 - constant columns
    "AND r.deleted_at IS NULL AND r.private = 0) AS has_public_ref FROM objects o"
)
INSERT_OBJECT = (
    "INSERT INTO objects (hash, mime_type, size, width, height, ref_count, created_at, "
    "last_accessed_at, tier) VALUES (?, ?, ?, ?, ?, 1, ?, ?, 'hot')"
)
REVIVE_OBJECT = (
    "UPDATE objects SET ref_count = ref_count + 1, deleted_at = NULL, gc_token = NULL, "
    "gc_lease_until = NULL WHERE hash = ?"
)
DECREMENT_OBJECT = (
    "UPDATE objects SET ref_count = ref_count - 1, "
    "deleted_at = CASE WHEN ref_count <= 1 THEN ? ELSE deleted_at END WHERE hash = ?"
)
REFERENCE_COLUMNS = "id, hash, owner, original_filename, private, created_at, deleted_at, seq"
SELECT_REFERENCE = f"SELECT {REFERENCE_COLUMNS} FROM refs"  # noqa: S608 - constant columns
INSERT_REFERENCE = (
    "INSERT INTO refs (id, hash, owner, original_filename, private, created_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)

# Revival that rewrote the blob: the row may be a placeholder (an adopted orphan) or marked by
# GC, so take the content's facts from the upload and clear the mark. Same hash, same facts.
REFRESH_CONTENT = (
    "UPDATE objects SET mime_type = ?, size = ?, width = ?, height = ?, blob_missing_at = NULL "
    "WHERE hash = ?"
)

# --- lifecycle: gc ------------------------------------------------------------------------------
# Keyset paging on (deleted_at, hash) over idx_objects_gc (ref_count, deleted_at).
GC_CANDIDATES = (
    "SELECT hash, deleted_at FROM objects WHERE ref_count = 0 AND deleted_at IS NOT NULL "
    "AND deleted_at <= ? AND (deleted_at > ? OR (deleted_at = ? AND hash > ?)) "
    "ORDER BY deleted_at, hash LIMIT ?"
)
COUNT_GC_CANDIDATES = (
    "SELECT COUNT(*) AS n FROM objects WHERE ref_count = 0 AND deleted_at IS NOT NULL "
    "AND deleted_at <= ?"
)
# The conditions of each GC step, shared by the one-object statements and the batch ones below:
# a batch applies exactly the same test to each of its objects.
# params: cutoff, now
GC_CLAIM_COND = (
    "ref_count = 0 AND deleted_at IS NOT NULL AND deleted_at <= ? "
    "AND (gc_token IS NULL OR gc_lease_until IS NULL OR gc_lease_until < ?) AND NOT EXISTS "
    "(SELECT 1 FROM refs r WHERE r.hash = objects.hash AND r.deleted_at IS NULL)"
)
# params: token, now + margin
GC_RENEW_COND = "gc_token = ? AND gc_lease_until > ? AND ref_count = 0"
# params: token, now
GC_FINISH_COND = (
    "gc_token = ? AND gc_lease_until > ? AND ref_count = 0 AND NOT EXISTS "
    "(SELECT 1 FROM refs r WHERE r.hash = objects.hash AND r.deleted_at IS NULL)"
)
# params: token, lease_until, hash, cutoff, now
GC_CLAIM = (
    "UPDATE objects SET gc_token = ?, gc_lease_until = ? WHERE hash = ? AND "  # noqa: S608
    + GC_CLAIM_COND
)
# params: lease_until, hash, token, now + margin
GC_RENEW = "UPDATE objects SET gc_lease_until = ? WHERE hash = ? AND " + GC_RENEW_COND  # noqa: S608
# params: lease_until, now, hash, token, now + margin
GC_RENEW_MARK = (
    "UPDATE objects SET gc_lease_until = ?, blob_missing_at = COALESCE(blob_missing_at, ?) "  # noqa: S608
    "WHERE hash = ? AND " + GC_RENEW_COND
)
# params: hash, token, now   (PostgreSQL: add FOR UPDATE)
GC_FINISH_CHECK = "SELECT hash FROM objects WHERE hash = ? AND " + GC_FINISH_COND  # noqa: S608
GC_DELETE_REFS = "DELETE FROM refs WHERE hash = ? AND deleted_at IS NOT NULL"
GC_DELETE_VARIANT_ROWS = "DELETE FROM variants WHERE hash = ?"
GC_DELETE_OBJECT = "DELETE FROM objects WHERE hash = ? AND gc_token = ? AND ref_count = 0"
HAS_ANY_REF = "SELECT 1 FROM refs WHERE hash = ? LIMIT 1"
HAS_OBJECT = "SELECT 1 FROM objects WHERE hash = ?"
# params: hash, size, created_at, last_accessed_at, deleted_at, blob_missing_at, token, lease
ADOPT_ORPHAN = (
    "INSERT INTO objects (hash, mime_type, size, width, height, ref_count, created_at, "
    "last_accessed_at, deleted_at, tier, blob_missing_at, gc_token, gc_lease_until) "
    "VALUES (?, 'application/octet-stream', ?, 0, 0, 0, ?, ?, ?, 'hot', ?, ?, ?) "
    "ON CONFLICT (hash) DO NOTHING"
)

# --- lifecycle: batches (gc and tier) -----------------------------------------------------------
# A batch step is one transaction for many objects, each object tested on its own conditions, the
# ones above. SQLite runs the one-object statements once per object inside one write transaction:
# the commit, not the statement, is what costs, and an IN list would tempt its planner onto
# idx_objects_gc or idx_objects_access (one equality on ref_count or tier looks cheaper than
# hundreds of keys) and scan every candidate per batch. PostgreSQL runs one statement over an
# array of hashes, built from the same conditions (postgres_sql.py).
# (Variants have no other index than their key, so this one is safe as an IN list.)
LIST_VARIANTS_MANY = (
    "SELECT hash, key, size, content_type, created_at FROM variants "
    "WHERE hash IN ({marks}) ORDER BY hash, key"
)
BATCH_CHUNK = 400  # values per IN list: below SQLite's oldest limit of 999 parameters

# --- lifecycle: reconcile -----------------------------------------------------------------------
# "{marks}" is replaced by "?, ?, ..." (one per value), never by data.
EXISTING_HASHES = "SELECT hash FROM objects WHERE hash IN ({marks})"
LIVE_REFERENCE_COUNTS = (
    "SELECT hash, COUNT(*) AS n FROM refs WHERE deleted_at IS NULL AND hash IN ({marks}) "
    "GROUP BY hash"
)
# (PostgreSQL: add FOR UPDATE so the count cannot race an upload's increment.)
REF_COUNT_ROW = "SELECT ref_count, deleted_at, gc_token, gc_lease_until FROM objects WHERE hash = ?"
COUNT_LIVE_REFS = "SELECT COUNT(*) AS n FROM refs WHERE hash = ? AND deleted_at IS NULL"
SET_REF_COUNT = "UPDATE objects SET ref_count = ?, deleted_at = ? WHERE hash = ?"
REFS_WITHOUT_OBJECT = (
    "SELECT r.hash AS hash, COUNT(*) AS n FROM refs r WHERE r.hash > ? "
    "AND NOT EXISTS (SELECT 1 FROM objects o WHERE o.hash = r.hash) "
    "GROUP BY r.hash ORDER BY r.hash LIMIT ?"
)
DELETE_VARIANT_ROWS_WITHOUT_OBJECT = (
    "DELETE FROM variants WHERE NOT EXISTS (SELECT 1 FROM objects o WHERE o.hash = variants.hash)"
)
# params: now, hash, now
MARK_BLOB_MISSING = (
    "UPDATE objects SET blob_missing_at = ? WHERE hash = ? AND blob_missing_at IS NULL "
    "AND (gc_token IS NULL OR gc_lease_until IS NULL OR gc_lease_until < ?)"
)
# params: hash, now
CLEAR_BLOB_MISSING = (
    "UPDATE objects SET blob_missing_at = NULL WHERE hash = ? AND blob_missing_at IS NOT NULL "
    "AND ref_count > 0 AND (gc_token IS NULL OR gc_lease_until IS NULL OR gc_lease_until < ?)"
)
DAMAGE_COLUMNS = "hash, kind, found_at, detail, reviewed_at, resolved_at"
# params: hash, kind, found_at, detail
RECORD_DAMAGE = (
    "INSERT INTO damage (hash, kind, found_at, detail) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (hash, kind) DO UPDATE SET detail = excluded.detail, "
    "found_at = CASE WHEN damage.resolved_at IS NULL THEN damage.found_at "
    "ELSE excluded.found_at END, "
    "reviewed_at = CASE WHEN damage.resolved_at IS NULL THEN damage.reviewed_at ELSE NULL END, "
    "resolved_at = NULL"
)
RESOLVE_DAMAGE = (
    "UPDATE damage SET resolved_at = ? WHERE hash = ? AND kind = ? AND resolved_at IS NULL"
)
REVIEW_DAMAGE_ALL = (
    "UPDATE damage SET reviewed_at = ? WHERE reviewed_at IS NULL AND resolved_at IS NULL"
)
REVIEW_DAMAGE_ONE = REVIEW_DAMAGE_ALL + " AND hash = ?"
LIST_DAMAGE = f"SELECT {DAMAGE_COLUMNS} FROM damage WHERE (hash > ? OR (hash = ? AND kind > ?))"  # noqa: S608 - constant columns
LIST_DAMAGE_ORDER = " ORDER BY hash, kind LIMIT ?"
COUNT_UNREVIEWED_DAMAGE = (
    "SELECT COUNT(*) AS n FROM damage WHERE reviewed_at IS NULL AND resolved_at IS NULL"
)

# --- lifecycle: verify and tier -----------------------------------------------------------------
COUNT_OBJECTS = "SELECT COUNT(*) AS n FROM objects"
COUNT_OBJECTS_SINCE = "SELECT COUNT(*) AS n FROM objects WHERE created_at >= ?"
OBJECTS_CREATED_SINCE = (
    SELECT_OBJECT + " WHERE o.created_at >= ? AND (o.created_at > ? OR (o.created_at = ? "
    "AND o.hash > ?)) ORDER BY o.created_at, o.hash LIMIT ?"
)
TIER_FILTER = (
    "o.tier = 'hot' AND o.last_accessed_at <= ? AND o.ref_count > 0 "
    "AND o.integrity_failed_at IS NULL AND o.blob_missing_at IS NULL"
)
TIER_CANDIDATES = (
    SELECT_OBJECT + " WHERE " + TIER_FILTER + " AND (o.last_accessed_at > ? OR "
    "(o.last_accessed_at = ? AND o.hash > ?)) ORDER BY o.last_accessed_at, o.hash LIMIT ?"
)
COUNT_TIER_CANDIDATES = "SELECT COUNT(*) AS n FROM objects o WHERE " + TIER_FILTER  # noqa: S608
OBJECTS_IN_TIER = SELECT_OBJECT + " WHERE o.tier = ? AND o.hash > ? ORDER BY o.hash LIMIT ?"
SET_TIER = "UPDATE objects SET tier = ? WHERE hash = ?"


def object_from_row(row: Mapping[str, Any]) -> ObjectRecord:
    return ObjectRecord(
        hash=row["hash"],
        mime_type=row["mime_type"],
        size=int(row["size"]),
        width=int(row["width"]),
        height=int(row["height"]),
        ref_count=int(row["ref_count"]),
        created_at=float(row["created_at"]),
        last_accessed_at=_opt_float(row["last_accessed_at"]),
        deleted_at=_opt_float(row["deleted_at"]),
        tier=row["tier"],
        integrity_failed_at=_opt_float(row["integrity_failed_at"]),
        blob_missing_at=_opt_float(row["blob_missing_at"]),
        gc_token=row["gc_token"],
        gc_lease_until=_opt_float(row["gc_lease_until"]),
        has_public_ref=bool(row["has_public_ref"]),
    )


def reference_from_row(row: Mapping[str, Any]) -> ReferenceRecord:
    return ReferenceRecord(
        id=row["id"],
        hash=row["hash"],
        owner=row["owner"],
        original_filename=row["original_filename"],
        private=bool(row["private"]),
        created_at=float(row["created_at"]),
        deleted_at=_opt_float(row["deleted_at"]),
        seq=int(row["seq"]),
    )


def damage_from_row(row: Mapping[str, Any]) -> DamageRecord:
    return DamageRecord(
        hash=row["hash"],
        kind=row["kind"],
        found_at=float(row["found_at"]),
        detail=row["detail"] or "",
        reviewed_at=_opt_float(row["reviewed_at"]),
        resolved_at=_opt_float(row["resolved_at"]),
    )


def marks(count: int) -> str:
    """``?, ?, ...``: placeholders for an IN list (the count is ours, never request data)."""
    if count <= 0:
        raise ValueError("an IN list needs at least one value")
    return ", ".join("?" * count)


def chunks(items: Iterable[str], size: int = BATCH_CHUNK) -> Iterator[list[str]]:
    """``items`` without duplicates, in lists of at most ``size`` (one IN list each)."""
    unique = list(dict.fromkeys(items))
    for start in range(0, len(unique), size):
        yield unique[start : start + size]


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


# Cursors are opaque to clients; a malformed one starts from the beginning rather than failing
# with a 500, and the API layer validates them first so clients get a 400.
class InvalidCursor(ValueError):
    pass


def encode_seq_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_seq_cursor(cursor: str | None) -> int:
    if not cursor:
        return 2**62
    text = _b64(cursor)
    if not text.startswith("s") or not text[1:].isdigit() or len(text) > 20:
        raise InvalidCursor(cursor)
    # Positions past any real seq mean "from the newest"; clamping keeps them inside every
    # backend's integer range (SQLite overflows past 2**63 - 1).
    return min(int(text[1:]), 2**62)


def encode_text_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(f"h{value}".encode()).decode().rstrip("=")


def decode_text_cursor(cursor: str | None) -> str:
    if not cursor:
        return ""
    text = _b64(cursor)
    if not text.startswith("h") or len(text) > 100:
        raise InvalidCursor(cursor)
    return text[1:]


def _b64(cursor: str) -> str:
    if len(cursor) > 200:
        raise InvalidCursor(cursor)
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor(cursor) from None
