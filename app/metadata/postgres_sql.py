"""SQL text only PostgreSQL runs; the text both backends share is in ``sql.py``.

``pg()`` turns sql.py's ``?`` placeholders into psycopg's ``%s``. Every value goes through a
parameter: no statement is built from request data.
"""

from __future__ import annotations

import functools

from app.metadata import sql


@functools.cache
def pg(query: str) -> str:
    """sql.py's ``?`` placeholders in psycopg's ``%s`` style (no statement there holds '%')."""
    assert "%" not in query, query
    return query.replace("?", "%s")


# "Claimed" is ObjectRecord.claimed_at: a GC token whose lease has not ended. The dedup upsert,
# for an upload that wrote the blob: insert the object, or count one more reference and revive
# it. A row whose blob may be gone (blob_missing_at) takes the upload's facts and loses the
# mark, as the blob was just written again (sql.REFRESH_CONTENT). A live GC lease wins: no row
# comes back, and the caller raises ObjectClaimed.
UPSERT_OBJECT = (
    "INSERT INTO objects (hash, mime_type, size, width, height, ref_count, created_at, "
    "last_accessed_at, tier) VALUES (%(hash)s, %(mime_type)s, %(size)s, %(width)s, "
    "%(height)s, 1, %(now)s, %(now)s, 'hot') "
    "ON CONFLICT (hash) DO UPDATE SET ref_count = objects.ref_count + 1, deleted_at = NULL, "
    "gc_token = NULL, gc_lease_until = NULL, "
    "mime_type = CASE WHEN objects.blob_missing_at IS NULL THEN objects.mime_type "
    "ELSE excluded.mime_type END, "
    "size = CASE WHEN objects.blob_missing_at IS NULL THEN objects.size ELSE excluded.size END, "
    "width = CASE WHEN objects.blob_missing_at IS NULL THEN objects.width "
    "ELSE excluded.width END, "
    "height = CASE WHEN objects.blob_missing_at IS NULL THEN objects.height "
    "ELSE excluded.height END, "
    "blob_missing_at = NULL "
    "WHERE objects.gc_token IS NULL OR COALESCE(objects.gc_lease_until, 0) <= %(now)s "
    "RETURNING hash"
)
# For an upload that did not write the blob: only a row whose blob is there may be revived.
REVIVE_UNCLAIMED = (
    "UPDATE objects SET ref_count = ref_count + 1, deleted_at = NULL, gc_token = NULL, "
    "gc_lease_until = NULL WHERE hash = %(hash)s AND blob_missing_at IS NULL "
    "AND (gc_token IS NULL OR COALESCE(gc_lease_until, 0) <= %(now)s) RETURNING hash"
)
OBJECT_STATE = (
    "SELECT ref_count, blob_missing_at, gc_token IS NOT NULL "
    "AND COALESCE(gc_lease_until, 0) > %s AS claimed FROM objects WHERE hash = %s"
)
# Objects before refs, always: lock the object row of a reference, with what restore needs.
LOCK_OBJECT_OF_REFERENCE = (
    "SELECT o.hash, o.ref_count, o.blob_missing_at, o.gc_token, o.gc_lease_until "
    "FROM refs r JOIN objects o ON o.hash = r.hash "
    "WHERE r.id = %s AND r.owner = %s FOR UPDATE OF o"
)

# --- lifecycle -----------------------------------------------------------------------------------
# sql.GC_CLAIM with its row picked FOR UPDATE SKIP LOCKED: a row that an upload or another
# collector is changing right now is skipped (not claimed this time), never waited for.
# params: token, lease_until, hash, cutoff, now   (the order of sql.GC_CLAIM)
GC_CLAIM_SKIP_LOCKED = (
    "UPDATE objects SET gc_token = %s, gc_lease_until = %s WHERE hash = ("
    "SELECT hash FROM objects WHERE hash = %s AND ref_count = 0 AND deleted_at IS NOT NULL "
    "AND deleted_at <= %s "
    "AND (gc_token IS NULL OR gc_lease_until IS NULL OR gc_lease_until < %s) "
    "FOR UPDATE SKIP LOCKED) AND ref_count = 0 AND NOT EXISTS "
    "(SELECT 1 FROM refs r WHERE r.hash = objects.hash AND r.deleted_at IS NULL)"
)
# The row-only part of sql.GC_FINISH_CHECK, locked; the references are checked after the lock.
# params: hash, token, now
GC_FINISH_LOCK = (
    "SELECT hash FROM objects WHERE hash = %s AND gc_token = %s AND gc_lease_until > %s "
    "AND ref_count = 0 FOR UPDATE"
)
HAS_LIVE_REF = "SELECT 1 FROM refs WHERE hash = %s AND deleted_at IS NULL LIMIT 1"
EXISTING_HASHES = "SELECT hash FROM objects WHERE hash = ANY(%s)"
LIVE_REFERENCE_COUNTS = (
    "SELECT hash, COUNT(*) AS n FROM refs WHERE deleted_at IS NULL AND hash = ANY(%s) GROUP BY hash"
)

# --- lifecycle batches ---------------------------------------------------------------------------
# The one-object statements' conditions (sql.py) over an array of hashes, each row re-tested under
# its row lock; RETURNING says which rows passed. Rows are locked in index (hash) order.
# params: token, lease_until, hashes, cutoff, now   (the claim skips rows others hold, as above)
GC_CLAIM_MANY = (
    "UPDATE objects SET gc_token = %s, gc_lease_until = %s WHERE hash IN ("
    "SELECT hash FROM objects WHERE hash = ANY(%s) AND ref_count = 0 AND deleted_at IS NOT NULL "
    "AND deleted_at <= %s "
    "AND (gc_token IS NULL OR gc_lease_until IS NULL OR gc_lease_until < %s) "
    "ORDER BY hash FOR UPDATE SKIP LOCKED) AND ref_count = 0 AND NOT EXISTS "
    "(SELECT 1 FROM refs r WHERE r.hash = objects.hash AND r.deleted_at IS NULL) RETURNING hash"
)
# params: lease_until, hashes, token, now + margin
GC_RENEW_MANY = pg(
    "UPDATE objects SET gc_lease_until = ? WHERE hash = ANY(?) AND "  # noqa: S608
    + sql.GC_RENEW_COND
    + " RETURNING hash"
)
# params: lease_until, now, hashes, token, now + margin
GC_RENEW_MARK_MANY = pg(
    "UPDATE objects SET gc_lease_until = ?, blob_missing_at = COALESCE(blob_missing_at, ?) "  # noqa: S608
    "WHERE hash = ANY(?) AND " + sql.GC_RENEW_COND + " RETURNING hash"
)
# GC_FINISH_LOCK for many rows; the references are checked once the rows are locked.
# params: hashes, token, now
GC_FINISH_LOCK_MANY = pg(
    "SELECT hash FROM objects WHERE hash = ANY(?) AND "  # noqa: S608
    + sql.GC_RENEW_COND
    + " ORDER BY hash FOR UPDATE"
)
HAS_LIVE_REF_MANY = "SELECT DISTINCT hash FROM refs WHERE hash = ANY(%s) AND deleted_at IS NULL"
GC_DELETE_REFS_MANY = "DELETE FROM refs WHERE hash = ANY(%s) AND deleted_at IS NOT NULL"
GC_DELETE_VARIANT_ROWS_MANY = "DELETE FROM variants WHERE hash = ANY(%s)"
# params: hashes, token
GC_DELETE_OBJECTS_MANY = (
    "DELETE FROM objects WHERE hash = ANY(%s) AND gc_token = %s AND ref_count = 0 RETURNING hash"
)
# params: tier, hashes[, expected]
SET_TIER_MANY = "UPDATE objects SET tier = %s WHERE hash = ANY(%s) RETURNING hash"
SET_TIER_EXPECTED_MANY = (
    "UPDATE objects SET tier = %s WHERE hash = ANY(%s) AND tier = ANY(%s) RETURNING hash"
)
LIST_VARIANTS_MANY = (
    "SELECT hash, key, size, content_type, created_at FROM variants "
    "WHERE hash = ANY(%s) ORDER BY hash, key"
)
