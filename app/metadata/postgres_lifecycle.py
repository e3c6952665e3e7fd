"""The lifecycle half of the PostgreSQL store: GC claims, reconcile, verify and tier queries.

Same semantics as SQLite's (app/metadata/sqlite.py), mostly the same SQL text (``sql.py``).
Where PostgreSQL needs more than the text, it says why:

- ``gc_claim`` picks its row with ``FOR UPDATE SKIP LOCKED``: an object that an upload (or
  another collector) is changing right now is skipped, never waited for; it is simply not
  claimed this time.
- ``gc_finish`` and ``fix_ref_count`` lock the object row first (``FOR UPDATE``) and look at
  its references in a later statement: every writer of references locks the object row first,
  so once the lock is held no live reference can appear or disappear under the check.

Every method is one short transaction; storage calls never happen inside one (the GC lease
covers those, see app/jobs/gc.py).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from app.metadata import sql
from app.metadata.base import DamageRecord, GcCandidate, ObjectRecord
from app.metadata.postgres_sql import (
    EXISTING_HASHES,
    GC_CLAIM_MANY,
    GC_CLAIM_SKIP_LOCKED,
    GC_DELETE_OBJECTS_MANY,
    GC_DELETE_REFS_MANY,
    GC_DELETE_VARIANT_ROWS_MANY,
    GC_FINISH_LOCK,
    GC_FINISH_LOCK_MANY,
    GC_RENEW_MANY,
    GC_RENEW_MARK_MANY,
    HAS_LIVE_REF,
    HAS_LIVE_REF_MANY,
    LIVE_REFERENCE_COUNTS,
    SET_TIER_EXPECTED_MANY,
    SET_TIER_MANY,
    pg,
)


class PostgresLifecycle:
    """Mixed into PostgresMetadataStore, which provides the connection helpers."""

    if TYPE_CHECKING:

        def _tx(self) -> AbstractContextManager[Any]: ...

        def _query(self, query: str, params: Any = ()) -> list[dict[str, Any]]: ...

        def _execute(self, query: str, params: Any = ()) -> int: ...

    def _count(self, query: str, params: Any = ()) -> int:
        return int(self._query(query, params)[0]["n"])

    # --- gc ----------------------------------------------------------------------------------
    def gc_candidates(
        self, cutoff: float, after: tuple[float, str] | None, limit: int
    ) -> list[GcCandidate]:
        at, h = after if after is not None else (-1.0, "")
        rows = self._query(pg(sql.GC_CANDIDATES), (cutoff, at, at, h, limit))
        return [GcCandidate(r["hash"], float(r["deleted_at"])) for r in rows]

    def count_gc_candidates(self, cutoff: float) -> int:
        return self._count(pg(sql.COUNT_GC_CANDIDATES), (cutoff,))

    def gc_claim(
        self, hash: str, token: str, *, now: float, cutoff: float, lease_until: float
    ) -> bool:
        return self._execute(GC_CLAIM_SKIP_LOCKED, (token, lease_until, hash, cutoff, now)) == 1

    def gc_renew(
        self,
        hash: str,
        token: str,
        *,
        now: float,
        margin: float,
        lease_until: float,
        mark_blob_missing: bool = False,
    ) -> bool:
        if mark_blob_missing:
            params = (lease_until, now, hash, token, now + margin)
            return self._execute(pg(sql.GC_RENEW_MARK), params) == 1
        return self._execute(pg(sql.GC_RENEW), (lease_until, hash, token, now + margin)) == 1

    def gc_finish(self, hash: str, token: str, *, now: float) -> bool:
        with self._tx() as c:
            if c.execute(GC_FINISH_LOCK, (hash, token, now)).fetchone() is None:
                return False
            if c.execute(HAS_LIVE_REF, (hash,)).fetchone() is not None:
                return False
            c.execute(pg(sql.GC_DELETE_REFS), (hash,))
            c.execute(pg(sql.GC_DELETE_VARIANT_ROWS), (hash,))
            return c.execute(pg(sql.GC_DELETE_OBJECT), (hash, token)).rowcount == 1

    # Batches: one transaction (one statement where it can be) for many objects, each row
    # tested on its own conditions under its row lock, exactly as the one-object methods do.
    def _returning(self, query: str, params: Any) -> set[str]:
        with self._tx() as c:
            return {r["hash"] for r in c.execute(query, params).fetchall()}

    def gc_claim_many(
        self, hashes: list[str], token: str, *, now: float, cutoff: float, lease_until: float
    ) -> set[str]:
        if not hashes:
            return set()
        return self._returning(GC_CLAIM_MANY, (token, lease_until, list(hashes), cutoff, now))

    def gc_renew_many(
        self,
        hashes: list[str],
        token: str,
        *,
        now: float,
        margin: float,
        lease_until: float,
        mark_blob_missing: bool = False,
    ) -> set[str]:
        if not hashes:
            return set()
        if mark_blob_missing:  # a PostgreSQL commit is durable (synchronous_commit = on)
            params = (lease_until, now, list(hashes), token, now + margin)
            return self._returning(GC_RENEW_MARK_MANY, params)
        return self._returning(GC_RENEW_MANY, (lease_until, list(hashes), token, now + margin))

    def gc_finish_many(self, hashes: list[str], token: str, *, now: float) -> set[str]:
        if not hashes:
            return set()
        with self._tx() as c:
            rows = c.execute(GC_FINISH_LOCK_MANY, (list(hashes), token, now)).fetchall()
            locked = [r["hash"] for r in rows]
            if not locked:
                return set()
            live = {r["hash"] for r in c.execute(HAS_LIVE_REF_MANY, (locked,)).fetchall()}
            ok = [h for h in locked if h not in live]
            if not ok:
                return set()
            c.execute(GC_DELETE_REFS_MANY, (ok,))
            c.execute(GC_DELETE_VARIANT_ROWS_MANY, (ok,))
            deleted = c.execute(GC_DELETE_OBJECTS_MANY, (ok, token)).fetchall()
            return {r["hash"] for r in deleted}

    def gc_adopt_orphan(
        self,
        hash: str,
        size: int,
        *,
        now: float,
        deleted_at: float,
        token: str,
        lease_until: float,
    ) -> bool:
        with self._tx() as c:
            if c.execute(pg(sql.HAS_ANY_REF), (hash,)).fetchone() is not None:
                return False  # references without an object: damage, never collected
            params = (hash, size, now, now, deleted_at, now, token, lease_until)
            return c.execute(pg(sql.ADOPT_ORPHAN), params).rowcount == 1

    # --- reconcile ---------------------------------------------------------------------------
    def existing_hashes(self, hashes: list[str]) -> set[str]:
        if not hashes:
            return set()
        return {r["hash"] for r in self._query(EXISTING_HASHES, (list(hashes),))}

    def live_reference_counts(self, hashes: list[str]) -> dict[str, int]:
        if not hashes:
            return {}
        rows = self._query(LIVE_REFERENCE_COUNTS, (list(hashes),))
        return {r["hash"]: int(r["n"]) for r in rows}

    def fix_ref_count(self, hash: str, now: float) -> tuple[int, int] | None:
        with self._tx() as c:
            row = c.execute(pg(sql.REF_COUNT_ROW) + " FOR UPDATE", (hash,)).fetchone()
            if row is None:
                return None
            if row["gc_token"] is not None and (row["gc_lease_until"] or 0) > now:
                return None
            live = int(c.execute(pg(sql.COUNT_LIVE_REFS), (hash,)).fetchone()["n"])
            old = int(row["ref_count"])
            deleted_at = row["deleted_at"]
            new_deleted_at = (deleted_at if deleted_at is not None else now) if live == 0 else None
            if old == live and new_deleted_at == deleted_at:
                return None
            c.execute(pg(sql.SET_REF_COUNT), (live, new_deleted_at, hash))
            return old, live

    def refs_without_object(self, after: str, limit: int) -> list[tuple[str, int]]:
        rows = self._query(pg(sql.REFS_WITHOUT_OBJECT), (after, limit))
        return [(r["hash"], int(r["n"])) for r in rows]

    def delete_variant_rows_without_object(self) -> int:
        return self._execute(pg(sql.DELETE_VARIANT_ROWS_WITHOUT_OBJECT))

    def mark_blob_missing(self, hash: str, now: float) -> bool:
        return self._execute(pg(sql.MARK_BLOB_MISSING), (now, hash, now)) == 1

    def clear_blob_missing(self, hash: str, now: float) -> bool:
        return self._execute(pg(sql.CLEAR_BLOB_MISSING), (hash, now)) == 1

    def record_damage(self, hash: str, kind: str, now: float, detail: str = "") -> None:
        self._execute(pg(sql.RECORD_DAMAGE), (hash, kind, now, detail))

    def resolve_damage(self, hash: str, kind: str, now: float) -> bool:
        return self._execute(pg(sql.RESOLVE_DAMAGE), (now, hash, kind)) == 1

    def review_damage(self, hash: str | None, now: float) -> int:
        if hash is None:
            return self._execute(pg(sql.REVIEW_DAMAGE_ALL), (now,))
        return self._execute(pg(sql.REVIEW_DAMAGE_ONE), (now, hash))

    def list_damage(
        self, *, open_only: bool = True, after: tuple[str, str] | None = None, limit: int = 500
    ) -> list[DamageRecord]:
        h, k = after if after is not None else ("", "")
        query = sql.LIST_DAMAGE + (" AND resolved_at IS NULL" if open_only else "")
        rows = self._query(pg(query + sql.LIST_DAMAGE_ORDER), (h, h, k, limit))
        return [sql.damage_from_row(r) for r in rows]

    def count_unreviewed_damage(self) -> int:
        return self._count(pg(sql.COUNT_UNREVIEWED_DAMAGE))

    # --- verify and tier ---------------------------------------------------------------------
    def count_objects(self, created_since: float | None = None) -> int:
        if created_since is None:
            return self._count(pg(sql.COUNT_OBJECTS))
        return self._count(pg(sql.COUNT_OBJECTS_SINCE), (created_since,))

    def objects_created_since(
        self, since: float, after: tuple[float, str] | None, limit: int
    ) -> list[ObjectRecord]:
        at, h = after if after is not None else (since - 1.0, "")
        rows = self._query(pg(sql.OBJECTS_CREATED_SINCE), (since, at, at, h, limit))
        return [sql.object_from_row(r) for r in rows]

    def tier_candidates(
        self, cutoff: float, after: tuple[float, str] | None, limit: int
    ) -> list[ObjectRecord]:
        at, h = after if after is not None else (-1.0, "")
        rows = self._query(pg(sql.TIER_CANDIDATES), (cutoff, at, at, h, limit))
        return [sql.object_from_row(r) for r in rows]

    def count_tier_candidates(self, cutoff: float) -> int:
        return self._count(pg(sql.COUNT_TIER_CANDIDATES), (cutoff,))

    def objects_in_tier(self, tier: str, after: str, limit: int) -> list[ObjectRecord]:
        rows = self._query(pg(sql.OBJECTS_IN_TIER), (tier, after, limit))
        return [sql.object_from_row(r) for r in rows]

    def set_object_tier(
        self, hash: str, tier: str, *, expected: tuple[str, ...] | None = None
    ) -> bool:
        # A compare-and-set after the blob moved: it waits for a row lock rather than skip it,
        # since skipping would leave the row naming a tier the blob is no longer in.
        if not expected:
            return self._execute(pg(sql.SET_TIER), (tier, hash)) == 1
        query = pg(sql.SET_TIER) + " AND tier = ANY(%s)"
        return self._execute(query, (tier, hash, list(expected))) == 1

    def set_object_tier_many(
        self, hashes: list[str], tier: str, *, expected: tuple[str, ...] | None = None
    ) -> set[str]:
        # Waits for row locks rather than skipping them, as set_object_tier does.
        if not hashes:
            return set()
        if not expected:
            return self._returning(SET_TIER_MANY, (tier, list(hashes)))
        return self._returning(SET_TIER_EXPECTED_MANY, (tier, list(hashes), list(expected)))
