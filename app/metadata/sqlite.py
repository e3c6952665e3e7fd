"""SQLite metadata on sqlite-utils: the embedded default.

One connection per thread (sqlite3 connections must not cross threads), WAL so readers never
block the writer, a busy timeout so concurrent gunicorn workers queue instead of failing, and
``BEGIN IMMEDIATE`` for every write transaction so two writers never deadlock upgrading a read
lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from app.metadata import sql
from app.metadata.base import (
    ContentInfo,
    DamageRecord,
    GcCandidate,
    MetadataError,
    NeedsBlob,
    ObjectClaimed,
    ObjectRecord,
    Page,
    ReferenceRecord,
    VariantRecord,
    iter_all_objects,
)
from app.metadata.sqlite_migrations import migrations

BUSY_TIMEOUT_MS = 15000
# bulk(): a page cache that holds the hot part of a large store's tables and indexes (the
# default 2 MB does not, and every statement reads pages again), and checkpoints every 200 MB of
# WAL instead of every 4 MB, so a page that many batches of a job change is copied into the
# database file (and that file synced) once per checkpoint rather than once per batch or two.
# A GC batch writes about 10 MB of WAL (its rows sit on pages all over the table): at 40 MB a
# 100,000-object GC checkpointed some fifty times, a third of its metadata time. Durability
# is the same: the WAL is what a commit writes either way, and a checkpoint only copies it.
# The WAL file may grow to that size during a job; the last connection's close folds it in.
BULK_CACHE_KIB = 64 * 1024
BULK_WAL_AUTOCHECKPOINT_PAGES = 50_000


class SqliteMetadataStore:
    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()

    # --- connections -----------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=True,
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction. ``durable``: its COMMIT syncs the WAL before returning
        (synchronous=FULL for this one transaction). NORMAL, the default, survives a crash of
        the process but not of the machine; a commit that a later deletion of bytes depends on
        is made durable (see gc_renew_many)."""
        conn = self._conn()
        if durable:
            conn.execute("PRAGMA synchronous=FULL")
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise MetadataError(f"database busy: {exc}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                # Also after a failed COMMIT (a constraint checked at commit, a full disk): the
                # transaction is still open then, and a connection left inside it would see its
                # own uncommitted rows and hold the write lock for every later use.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise MetadataError(str(exc)) from exc
                raise
        finally:
            if durable:
                conn.execute("PRAGMA synchronous=NORMAL")

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """This thread's connection tuned for a job of many transactions (see BULK_*), and
        put back afterwards. WAL checkpoints are later but durability is unchanged: under
        synchronous=NORMAL a commit is durable against a crash of the process, not of the
        machine, and commits that must survive that sync themselves (``_tx(durable=True)``)."""
        conn = self._conn()
        cache = int(conn.execute("PRAGMA cache_size").fetchone()[0])
        checkpoint = int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        conn.execute(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
        conn.execute(f"PRAGMA wal_autocheckpoint={BULK_WAL_AUTOCHECKPOINT_PAGES}")
        try:
            yield
        finally:
            conn.execute(f"PRAGMA wal_autocheckpoint={checkpoint}")
            conn.execute(f"PRAGMA cache_size={cache}")

    def _query(self, query: str, params: tuple = ()) -> list[sqlite3.Row]:
        try:
            return self._conn().execute(query, params).fetchall()
        except sqlite3.Error as exc:
            raise MetadataError(str(exc)) from exc

    def migrate(self) -> list[str]:
        db = sqlite_utils.Database(self._conn())
        pending = [m.name for m in migrations.pending(db)]
        migrations.apply(db)
        return pending

    def ping(self) -> None:
        self._query("SELECT 1")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # --- objects ---------------------------------------------------------------------------
    def get_object(self, hash: str) -> ObjectRecord | None:
        rows = self._query(sql.SELECT_OBJECT + " WHERE o.hash = ?", (hash,))
        return sql.object_from_row(rows[0]) if rows else None

    def list_objects(self, limit: int, cursor: str | None) -> Page[ObjectRecord]:
        after = sql.decode_text_cursor(cursor)
        rows = self._query(
            sql.SELECT_OBJECT + " WHERE o.hash > ? ORDER BY o.hash LIMIT ?", (after, limit + 1)
        )
        items = [sql.object_from_row(r) for r in rows[:limit]]
        nxt = sql.encode_text_cursor(items[-1].hash) if len(rows) > limit else None
        return Page(items, nxt)

    def iter_objects(self, batch: int = 500) -> Iterator[ObjectRecord]:
        return iter_all_objects(self, batch)

    def mark_integrity_failure(self, hash: str, now: float) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE objects SET integrity_failed_at = ? "
                "WHERE hash = ? AND integrity_failed_at IS NULL",
                (now, hash),
            )

    def record_access(self, hash: str, now: float, interval: float) -> bool:
        # A plain UPDATE with the throttle in the WHERE clause: one statement, no read first.
        try:
            cur = self._conn().execute(
                "UPDATE objects SET last_accessed_at = ? WHERE hash = ? "
                "AND (last_accessed_at IS NULL OR last_accessed_at <= ?)",
                (now, hash, now - interval),
            )
        except sqlite3.Error as exc:
            raise MetadataError(str(exc)) from exc
        return cur.rowcount > 0

    # --- references ------------------------------------------------------------------------
    def add_reference(
        self,
        content: ContentInfo,
        *,
        ref_id: str,
        owner: str,
        original_filename: str | None,
        private: bool,
        now: float,
        blob_written: bool,
    ) -> tuple[ReferenceRecord, ObjectRecord]:
        with self._tx() as c:
            row = c.execute(
                "SELECT ref_count, gc_token, gc_lease_until, blob_missing_at FROM objects "
                "WHERE hash = ?",
                (content.hash,),
            ).fetchone()
            if row is None:
                if not blob_written:
                    raise NeedsBlob(content.hash)
                c.execute(
                    sql.INSERT_OBJECT,
                    (
                        content.hash,
                        content.mime_type,
                        content.size,
                        content.width,
                        content.height,
                        now,
                        now,
                    ),
                )
            else:
                if row["gc_token"] is not None and (row["gc_lease_until"] or 0) > now:
                    raise ObjectClaimed(content.hash)
                if row["blob_missing_at"] is not None:
                    # GC (or reconcile) may have deleted the blob: only an upload that wrote
                    # it again may revive the row.
                    if not blob_written:
                        raise NeedsBlob(content.hash)
                    c.execute(
                        sql.REFRESH_CONTENT,
                        (
                            content.mime_type,
                            content.size,
                            content.width,
                            content.height,
                            content.hash,
                        ),
                    )
                c.execute(sql.REVIVE_OBJECT, (content.hash,))
            c.execute(
                sql.INSERT_REFERENCE,
                (ref_id, content.hash, owner, original_filename, int(private), now),
            )
            ref = c.execute(sql.SELECT_REFERENCE + " WHERE id = ?", (ref_id,)).fetchone()
            obj = c.execute(sql.SELECT_OBJECT + " WHERE o.hash = ?", (content.hash,)).fetchone()
        return sql.reference_from_row(ref), sql.object_from_row(obj)

    def get_reference(self, ref_id: str) -> ReferenceRecord | None:
        rows = self._query(sql.SELECT_REFERENCE + " WHERE id = ?", (ref_id,))
        return sql.reference_from_row(rows[0]) if rows else None

    def list_references(self, owner: str, limit: int, cursor: str | None) -> Page[ReferenceRecord]:
        before = sql.decode_seq_cursor(cursor)
        rows = self._query(
            sql.SELECT_REFERENCE
            + " WHERE owner = ? AND deleted_at IS NULL AND seq < ? ORDER BY seq DESC LIMIT ?",
            (owner, before, limit + 1),
        )
        items = [sql.reference_from_row(r) for r in rows[:limit]]
        nxt = sql.encode_seq_cursor(items[-1].seq) if len(rows) > limit else None
        return Page(items, nxt)

    def delete_reference(self, ref_id: str, owner: str, now: float) -> ReferenceRecord | None:
        with self._tx() as c:
            cur = c.execute(
                "UPDATE refs SET deleted_at = ? WHERE id = ? AND owner = ? AND deleted_at IS NULL",
                (now, ref_id, owner),
            )
            if cur.rowcount == 0:
                return None
            ref = sql.reference_from_row(
                c.execute(sql.SELECT_REFERENCE + " WHERE id = ?", (ref_id,)).fetchone()
            )
            c.execute(sql.DECREMENT_OBJECT, (now, ref.hash))
        return ref

    def restore_reference(self, ref_id: str, owner: str, now: float) -> ReferenceRecord | None:
        with self._tx() as c:
            row = c.execute(
                "SELECT r.hash, o.gc_token, o.gc_lease_until, o.ref_count, o.blob_missing_at "
                "FROM refs r "
                "JOIN objects o ON o.hash = r.hash "
                "WHERE r.id = ? AND r.owner = ? AND r.deleted_at IS NOT NULL",
                (ref_id, owner),
            ).fetchone()
            if row is None:
                return None
            if row["gc_token"] is not None and (row["gc_lease_until"] or 0) > now:
                return None
            if row["ref_count"] <= 0 and row["blob_missing_at"] is not None:
                return None  # being collected: its blob may already be gone
            c.execute("UPDATE refs SET deleted_at = NULL WHERE id = ?", (ref_id,))
            c.execute(sql.REVIVE_OBJECT, (row["hash"],))
            ref = c.execute(sql.SELECT_REFERENCE + " WHERE id = ?", (ref_id,)).fetchone()
        return sql.reference_from_row(ref)

    def live_references(self, hash: str) -> list[ReferenceRecord]:
        rows = self._query(
            sql.SELECT_REFERENCE + " WHERE hash = ? AND deleted_at IS NULL ORDER BY seq", (hash,)
        )
        return [sql.reference_from_row(r) for r in rows]

    # --- variants --------------------------------------------------------------------------
    def add_variant(self, hash: str, key: str, size: int, content_type: str, now: float) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO variants (hash, key, size, content_type, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (hash, key) DO UPDATE SET size = excluded.size",
                (hash, key, size, content_type, now),
            )

    def list_variants(self, hash: str) -> list[VariantRecord]:
        rows = self._query(
            "SELECT hash, key, size, content_type, created_at FROM variants "
            "WHERE hash = ? ORDER BY key",
            (hash,),
        )
        return [VariantRecord(**dict(r)) for r in rows]

    def list_variants_many(self, hashes: list[str]) -> dict[str, list[VariantRecord]]:
        found: dict[str, list[VariantRecord]] = {h: [] for h in hashes}
        for chunk in sql.chunks(hashes):
            query = sql.LIST_VARIANTS_MANY.format(marks=sql.marks(len(chunk)))
            for r in self._query(query, tuple(chunk)):
                found[r["hash"]].append(VariantRecord(**dict(r)))
        return found

    # --- lifecycle: gc ---------------------------------------------------------------------
    def _write(self, query: str, params: tuple, *, durable: bool = False) -> int:
        """One statement in its own write transaction; the number of rows it changed."""
        try:
            with self._tx(durable=durable) as c:
                return c.execute(query, params).rowcount
        except sqlite3.Error as exc:
            raise MetadataError(str(exc)) from exc

    def _count(self, query: str, params: tuple = ()) -> int:
        return int(self._query(query, params)[0]["n"])

    def gc_candidates(
        self, cutoff: float, after: tuple[float, str] | None, limit: int
    ) -> list[GcCandidate]:
        at, h = after if after is not None else (-1.0, "")
        rows = self._query(sql.GC_CANDIDATES, (cutoff, at, at, h, limit))
        return [GcCandidate(r["hash"], float(r["deleted_at"])) for r in rows]

    def count_gc_candidates(self, cutoff: float) -> int:
        return self._count(sql.COUNT_GC_CANDIDATES, (cutoff,))

    def gc_claim(
        self, hash: str, token: str, *, now: float, cutoff: float, lease_until: float
    ) -> bool:
        return self._write(sql.GC_CLAIM, (token, lease_until, hash, cutoff, now)) == 1

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
        if mark_blob_missing:  # durable: see gc_renew_many
            params: tuple = (lease_until, now, hash, token, now + margin)
            return self._write(sql.GC_RENEW_MARK, params, durable=True) == 1
        return self._write(sql.GC_RENEW, (lease_until, hash, token, now + margin)) == 1

    def gc_finish(self, hash: str, token: str, *, now: float) -> bool:
        try:
            with self._tx() as c:
                if c.execute(sql.GC_FINISH_CHECK, (hash, token, now)).fetchone() is None:
                    return False
                c.execute(sql.GC_DELETE_REFS, (hash,))
                c.execute(sql.GC_DELETE_VARIANT_ROWS, (hash,))
                return c.execute(sql.GC_DELETE_OBJECT, (hash, token)).rowcount == 1
        except sqlite3.Error as exc:
            raise MetadataError(str(exc)) from exc

    # Batches: one write transaction for the whole batch, in which each object gets the
    # one-object statement (see sql.py for why not an IN list). The answer is what the
    # one-object methods would have said, object by object.
    def _many(
        self,
        hashes: list[str],
        step: Callable[[sqlite3.Connection, str], bool],
        *,
        durable: bool = False,
    ) -> set[str]:
        """``step(connection, hash)`` for each hash in one write transaction; the hashes for
        which it returned True."""
        done: set[str] = set()
        if not hashes:
            return done
        try:
            with self._tx(durable=durable) as c:
                for h in dict.fromkeys(hashes):
                    if step(c, h):
                        done.add(h)
        except sqlite3.Error as exc:
            raise MetadataError(str(exc)) from exc
        return done

    def gc_claim_many(
        self, hashes: list[str], token: str, *, now: float, cutoff: float, lease_until: float
    ) -> set[str]:
        def step(c: sqlite3.Connection, h: str) -> bool:
            return c.execute(sql.GC_CLAIM, (token, lease_until, h, cutoff, now)).rowcount == 1

        return self._many(hashes, step)

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
        def step(c: sqlite3.Connection, h: str) -> bool:
            if mark_blob_missing:
                params: tuple = (lease_until, now, h, token, now + margin)
                return c.execute(sql.GC_RENEW_MARK, params).rowcount == 1
            return c.execute(sql.GC_RENEW, (lease_until, h, token, now + margin)).rowcount == 1

        # The mark is what makes deleting the blob safe, so it must not be lost to a power
        # failure once the deletion has reached the disk: that commit syncs the WAL.
        return self._many(hashes, step, durable=mark_blob_missing)

    def gc_finish_many(self, hashes: list[str], token: str, *, now: float) -> set[str]:
        def step(c: sqlite3.Connection, h: str) -> bool:
            if c.execute(sql.GC_FINISH_CHECK, (h, token, now)).fetchone() is None:
                return False
            c.execute(sql.GC_DELETE_REFS, (h,))
            c.execute(sql.GC_DELETE_VARIANT_ROWS, (h,))
            return c.execute(sql.GC_DELETE_OBJECT, (h, token)).rowcount == 1

        return self._many(hashes, step)

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
        try:
            with self._tx() as c:
                if c.execute(sql.HAS_ANY_REF, (hash,)).fetchone() is not None:
                    return False  # references without an object: damage, never collected
                params = (hash, size, now, now, deleted_at, now, token, lease_until)
                return c.execute(sql.ADOPT_ORPHAN, params).rowcount == 1
        except sqlite3.Error as exc:
            raise MetadataError(str(exc)) from exc

    # --- lifecycle: reconcile --------------------------------------------------------------
    def existing_hashes(self, hashes: list[str]) -> set[str]:
        if not hashes:
            return set()
        query = sql.EXISTING_HASHES.format(marks=sql.marks(len(hashes)))
        return {r["hash"] for r in self._query(query, tuple(hashes))}

    def live_reference_counts(self, hashes: list[str]) -> dict[str, int]:
        if not hashes:
            return {}
        query = sql.LIVE_REFERENCE_COUNTS.format(marks=sql.marks(len(hashes)))
        return {r["hash"]: int(r["n"]) for r in self._query(query, tuple(hashes))}

    def fix_ref_count(self, hash: str, now: float) -> tuple[int, int] | None:
        try:
            with self._tx() as c:
                row = c.execute(sql.REF_COUNT_ROW, (hash,)).fetchone()
                if row is None:
                    return None
                if row["gc_token"] is not None and (row["gc_lease_until"] or 0) > now:
                    return None
                live = int(c.execute(sql.COUNT_LIVE_REFS, (hash,)).fetchone()["n"])
                old = int(row["ref_count"])
                deleted_at = row["deleted_at"]
                new_deleted_at = (
                    (deleted_at if deleted_at is not None else now) if live == 0 else None
                )
                if old == live and new_deleted_at == deleted_at:
                    return None
                c.execute(sql.SET_REF_COUNT, (live, new_deleted_at, hash))
                return old, live
        except sqlite3.Error as exc:
            raise MetadataError(str(exc)) from exc

    def refs_without_object(self, after: str, limit: int) -> list[tuple[str, int]]:
        return [
            (r["hash"], int(r["n"])) for r in self._query(sql.REFS_WITHOUT_OBJECT, (after, limit))
        ]

    def delete_variant_rows_without_object(self) -> int:
        return self._write(sql.DELETE_VARIANT_ROWS_WITHOUT_OBJECT, ())

    def mark_blob_missing(self, hash: str, now: float) -> bool:
        return self._write(sql.MARK_BLOB_MISSING, (now, hash, now)) == 1

    def clear_blob_missing(self, hash: str, now: float) -> bool:
        return self._write(sql.CLEAR_BLOB_MISSING, (hash, now)) == 1

    def record_damage(self, hash: str, kind: str, now: float, detail: str = "") -> None:
        self._write(sql.RECORD_DAMAGE, (hash, kind, now, detail))

    def resolve_damage(self, hash: str, kind: str, now: float) -> bool:
        return self._write(sql.RESOLVE_DAMAGE, (now, hash, kind)) == 1

    def review_damage(self, hash: str | None, now: float) -> int:
        if hash is None:
            return self._write(sql.REVIEW_DAMAGE_ALL, (now,))
        return self._write(sql.REVIEW_DAMAGE_ONE, (now, hash))

    def list_damage(
        self, *, open_only: bool = True, after: tuple[str, str] | None = None, limit: int = 500
    ) -> list[DamageRecord]:
        h, k = after if after is not None else ("", "")
        query = sql.LIST_DAMAGE + (" AND resolved_at IS NULL" if open_only else "")
        rows = self._query(query + sql.LIST_DAMAGE_ORDER, (h, h, k, limit))
        return [sql.damage_from_row(r) for r in rows]

    def count_unreviewed_damage(self) -> int:
        return self._count(sql.COUNT_UNREVIEWED_DAMAGE)

    # --- lifecycle: verify and tier --------------------------------------------------------
    def count_objects(self, created_since: float | None = None) -> int:
        if created_since is None:
            return self._count(sql.COUNT_OBJECTS)
        return self._count(sql.COUNT_OBJECTS_SINCE, (created_since,))

    def objects_created_since(
        self, since: float, after: tuple[float, str] | None, limit: int
    ) -> list[ObjectRecord]:
        at, h = after if after is not None else (since - 1.0, "")
        rows = self._query(sql.OBJECTS_CREATED_SINCE, (since, at, at, h, limit))
        return [sql.object_from_row(r) for r in rows]

    def tier_candidates(
        self, cutoff: float, after: tuple[float, str] | None, limit: int
    ) -> list[ObjectRecord]:
        at, h = after if after is not None else (-1.0, "")
        rows = self._query(sql.TIER_CANDIDATES, (cutoff, at, at, h, limit))
        return [sql.object_from_row(r) for r in rows]

    def count_tier_candidates(self, cutoff: float) -> int:
        return self._count(sql.COUNT_TIER_CANDIDATES, (cutoff,))

    def objects_in_tier(self, tier: str, after: str, limit: int) -> list[ObjectRecord]:
        rows = self._query(sql.OBJECTS_IN_TIER, (tier, after, limit))
        return [sql.object_from_row(r) for r in rows]

    def set_object_tier(
        self, hash: str, tier: str, *, expected: tuple[str, ...] | None = None
    ) -> bool:
        if not expected:
            return self._write(sql.SET_TIER, (tier, hash)) == 1
        query = sql.SET_TIER + f" AND tier IN ({sql.marks(len(expected))})"
        return self._write(query, (tier, hash, *expected)) == 1

    def set_object_tier_many(
        self, hashes: list[str], tier: str, *, expected: tuple[str, ...] | None = None
    ) -> set[str]:
        query, extra = sql.SET_TIER, expected or ()
        if extra:
            query += f" AND tier IN ({sql.marks(len(extra))})"

        def step(c: sqlite3.Connection, h: str) -> bool:
            return c.execute(query, (tier, h, *extra)).rowcount == 1

        return self._many(hashes, step)
