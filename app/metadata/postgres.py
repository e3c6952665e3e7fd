"""PostgreSQL metadata on psycopg 3 and psycopg_pool: several nodes sharing one database.

Same contract and same SQL text as SQLite (``sql.py``) where the SQL is the same; where
PostgreSQL has a better tool for concurrency, it is used instead:

- the dedup upsert is one ``INSERT ... ON CONFLICT (hash) DO UPDATE ... RETURNING``, so two
  nodes adding the same new content never both insert, and a GC lease is honoured by the
  conflict clause's ``WHERE`` rather than by a read first;
- a GC claim picks its row with ``SELECT ... FOR UPDATE SKIP LOCKED``: a row that an upload or
  another collector is changing right now is skipped, never waited for (postgres_lifecycle.py;
  a tier change is a compare-and-set made after the blob moved, so it waits instead);
- every transaction is a few statements long; rows are always locked objects first, then
  refs, so two transactions never deadlock on each other.

Connections come from a pool per process, opened on first use and rebuilt after a fork
(a pool's sockets and threads must never be shared with a child). Every database error is a
``MetadataError``; ``NeedsBlob`` and ``ObjectClaimed`` mean what they mean for SQLite.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from app.metadata import sql
from app.metadata.base import (
    ContentInfo,
    MetadataError,
    NeedsBlob,
    ObjectClaimed,
    ObjectRecord,
    Page,
    ReferenceRecord,
    VariantRecord,
    iter_all_objects,
)
from app.metadata.postgres_lifecycle import PostgresLifecycle
from app.metadata.postgres_migrations import (
    ADVISORY_LOCK_KEY,
    CREATE_MIGRATIONS_TABLE,
    MIGRATIONS,
)
from app.metadata.postgres_sql import (
    LIST_VARIANTS_MANY,
    LOCK_OBJECT_OF_REFERENCE,
    OBJECT_STATE,
    REVIVE_UNCLAIMED,
    UPSERT_OBJECT,
    pg,
)

POOL_MIN = 1
POOL_MAX = 10
POOL_TIMEOUT_SECONDS = 5.0  # waiting for a free connection, then MetadataError (503)
PING_TIMEOUT_SECONDS = 3.0
STATEMENT_TIMEOUT_MS = 30_000
LOCK_TIMEOUT_MS = 15_000  # as SQLite's busy timeout: a stuck lock fails, it never hangs

# Pools inherited through fork: kept referenced so their finalizers never run in the child
# (closing them there would end the parent's server sessions).
_ABANDONED: list[ConnectionPool] = []


def _storable(*values: str) -> bool:
    """PostgreSQL text cannot hold NUL: such a lookup key can match nothing, so answer
    "absent" as SQLite would, instead of a database error (a 503 for a hostile path)."""
    return not any("\x00" in v for v in values)


class PostgresMetadataStore(PostgresLifecycle):
    def __init__(
        self,
        url: str,
        *,
        min_size: int = POOL_MIN,
        max_size: int = POOL_MAX,
        timeout: float = POOL_TIMEOUT_SECONDS,
    ) -> None:
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        self.url = url
        self._min = min_size
        self._max = max_size
        self._timeout = timeout
        self._pool: ConnectionPool | None = None
        self._pid = 0
        self._closed = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        try:
            params = conninfo_to_dict(self.url)
        except psycopg.Error:
            return "PostgresMetadataStore(<invalid URL>)"
        where = f"{params.get('host', '')}:{params.get('port', '')}/{params.get('dbname', '')}"
        return f"PostgresMetadataStore({where})"  # never the password

    # --- connections -----------------------------------------------------------------------
    def _pool_here(self) -> ConnectionPool:
        pool, pid = self._pool, os.getpid()
        if pool is not None and self._pid == pid:
            return pool
        with self._lock:
            if self._closed:
                raise MetadataError("the metadata store is closed")
            if self._pool is not None and self._pid != pid:
                _ABANDONED.append(self._pool)  # the parent's; not ours to close
                self._pool = None
            if self._pool is None:
                self._pool = self._new_pool()
                self._pid = pid
            return self._pool

    def _new_pool(self) -> ConnectionPool:
        kwargs: dict[str, Any] = {"autocommit": True, "row_factory": dict_row}
        try:
            if "application_name" not in conninfo_to_dict(self.url):
                kwargs["application_name"] = "image-origin"
        except psycopg.ProgrammingError as exc:
            raise MetadataError(f"invalid database URL: {exc}") from None
        return ConnectionPool(
            self.url,
            min_size=self._min,
            max_size=self._max,
            kwargs=kwargs,
            configure=_configure,
            check=ConnectionPool.check_connection,
            timeout=self._timeout,
            open=True,
            name="image-origin-metadata",
        )

    @contextmanager
    def _conn(self, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        try:
            with self._pool_here().connection(timeout=timeout) as conn:
                yield conn
        except psycopg.Error as exc:  # includes PoolTimeout
            raise MetadataError(f"{type(exc).__name__}: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection]:
        with self._conn() as conn, conn.transaction():
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """One short transaction, for the bulk tools of this package (copy-metadata)."""
        with self._tx() as conn:
            yield conn

    def _query(self, query: str, params: Any = ()) -> list[dict[str, Any]]:
        with self._conn() as conn:
            return conn.execute(query, params).fetchall()

    def _execute(self, query: str, params: Any = ()) -> int:
        with self._conn() as conn:
            return conn.execute(query, params).rowcount

    def migrate(self) -> list[str]:
        applied: list[str] = []
        for migration in MIGRATIONS:
            with self._tx() as c:
                c.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
                c.execute(CREATE_MIGRATIONS_TABLE)
                done = c.execute(
                    "SELECT 1 FROM schema_migrations WHERE name = %s", (migration.name,)
                ).fetchone()
                if done:
                    continue
                for statement in migration.statements:
                    c.execute(statement)
                c.execute(
                    "INSERT INTO schema_migrations (name, applied_at) VALUES (%s, %s)",
                    (migration.name, time.time()),
                )
                applied.append(migration.name)
        return applied

    def applied_migrations(self) -> list[str]:
        with self._conn() as conn:
            exists = conn.execute("SELECT to_regclass('schema_migrations') AS t").fetchone()
            if exists is None or exists["t"] is None:
                return []
            rows = conn.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall()
        return [r["name"] for r in rows]

    def ping(self) -> None:
        with self._conn(timeout=min(PING_TIMEOUT_SECONDS, self._timeout)) as conn:
            conn.execute("SELECT 1")

    def close(self) -> None:
        """Close this process's pool for good: a later call is a MetadataError, never a new
        pool nobody would close."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            if pool is not None and self._pid == os.getpid():
                pool.close()
            elif pool is not None:
                _ABANDONED.append(pool)

    def bulk(self) -> AbstractContextManager[None]:
        """Nothing to tune: each call takes a pooled connection for one short transaction."""
        return contextlib.nullcontext()

    # --- objects ---------------------------------------------------------------------------
    def get_object(self, hash: str) -> ObjectRecord | None:
        if not _storable(hash):
            return None
        rows = self._query(pg(sql.SELECT_OBJECT + " WHERE o.hash = ?"), (hash,))
        return sql.object_from_row(rows[0]) if rows else None

    def list_objects(self, limit: int, cursor: str | None) -> Page[ObjectRecord]:
        # Hashes hold no NUL, so "hash > p + NUL + rest" is "hash > p" (SQLite's byte order).
        after = sql.decode_text_cursor(cursor).split("\x00", 1)[0]
        rows = self._query(
            pg(sql.SELECT_OBJECT + " WHERE o.hash > ? ORDER BY o.hash LIMIT ?"), (after, limit + 1)
        )
        items = [sql.object_from_row(r) for r in rows[:limit]]
        nxt = sql.encode_text_cursor(items[-1].hash) if len(rows) > limit else None
        return Page(items, nxt)

    def iter_objects(self, batch: int = 500) -> Iterator[ObjectRecord]:
        return iter_all_objects(self, batch)

    def mark_integrity_failure(self, hash: str, now: float) -> None:
        self._execute(
            "UPDATE objects SET integrity_failed_at = %s "
            "WHERE hash = %s AND integrity_failed_at IS NULL",
            (now, hash),
        )

    def record_access(self, hash: str, now: float, interval: float) -> bool:
        # One statement, the throttle in its WHERE clause: no read first, no transaction.
        return (
            self._execute(
                "UPDATE objects SET last_accessed_at = %s WHERE hash = %s "
                "AND (last_accessed_at IS NULL OR last_accessed_at <= %s)",
                (now, hash, now - interval),
            )
            > 0
        )

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
        params = {
            "hash": content.hash,
            "mime_type": content.mime_type,
            "size": content.size,
            "width": content.width,
            "height": content.height,
            "now": now,
        }
        with self._tx() as c:
            # Both statements lock the object row until commit, so a GC claim can never slip
            # between the upsert and the reference insert.
            statement = UPSERT_OBJECT if blob_written else REVIVE_UNCLAIMED
            if c.execute(statement, params).fetchone() is None:
                state = c.execute(OBJECT_STATE, (now, content.hash)).fetchone()
                if state is not None and state["claimed"]:
                    raise ObjectClaimed(content.hash)
                # Absent, or its blob may be gone (GC, reconcile): write the blob first.
                raise NeedsBlob(content.hash)
            ref = c.execute(
                pg(sql.INSERT_REFERENCE) + f" RETURNING {sql.REFERENCE_COLUMNS}",
                (ref_id, content.hash, owner, original_filename, int(private), now),
            ).fetchone()
            obj = c.execute(pg(sql.SELECT_OBJECT + " WHERE o.hash = ?"), (content.hash,))
            obj_row = obj.fetchone()
        assert ref is not None and obj_row is not None
        return sql.reference_from_row(ref), sql.object_from_row(obj_row)

    def get_reference(self, ref_id: str) -> ReferenceRecord | None:
        if not _storable(ref_id):
            return None
        rows = self._query(pg(sql.SELECT_REFERENCE + " WHERE id = ?"), (ref_id,))
        return sql.reference_from_row(rows[0]) if rows else None

    def list_references(self, owner: str, limit: int, cursor: str | None) -> Page[ReferenceRecord]:
        before = sql.decode_seq_cursor(cursor)
        if not _storable(owner):
            return Page([], None)
        rows = self._query(
            pg(
                sql.SELECT_REFERENCE
                + " WHERE owner = ? AND deleted_at IS NULL AND seq < ? ORDER BY seq DESC LIMIT ?"
            ),
            (owner, min(before, 2**63 - 1), limit + 1),
        )
        items = [sql.reference_from_row(r) for r in rows[:limit]]
        nxt = sql.encode_seq_cursor(items[-1].seq) if len(rows) > limit else None
        return Page(items, nxt)

    def _lock_object_of(
        self, c: psycopg.Connection, ref_id: str, owner: str
    ) -> dict[str, Any] | None:
        """Lock the object row of a reference (objects before refs, always)."""
        return c.execute(LOCK_OBJECT_OF_REFERENCE, (ref_id, owner)).fetchone()

    def delete_reference(self, ref_id: str, owner: str, now: float) -> ReferenceRecord | None:
        if not _storable(ref_id, owner):
            return None
        with self._tx() as c:
            obj = self._lock_object_of(c, ref_id, owner)
            if obj is None:
                return None
            row = c.execute(
                "UPDATE refs SET deleted_at = %s WHERE id = %s AND owner = %s "  # noqa: S608
                f"AND deleted_at IS NULL RETURNING {sql.REFERENCE_COLUMNS}",
                (now, ref_id, owner),
            ).fetchone()
            if row is None:
                return None
            c.execute(pg(sql.DECREMENT_OBJECT), (now, obj["hash"]))
        return sql.reference_from_row(row)

    def restore_reference(self, ref_id: str, owner: str, now: float) -> ReferenceRecord | None:
        if not _storable(ref_id, owner):
            return None
        with self._tx() as c:
            obj = self._lock_object_of(c, ref_id, owner)
            if obj is None:
                return None
            if obj["gc_token"] is not None and (obj["gc_lease_until"] or 0) > now:
                return None  # GC holds it: too late to restore
            if obj["ref_count"] <= 0 and obj["blob_missing_at"] is not None:
                return None  # being collected: its blob may already be gone
            row = c.execute(
                "UPDATE refs SET deleted_at = NULL WHERE id = %s "  # noqa: S608
                f"AND deleted_at IS NOT NULL RETURNING {sql.REFERENCE_COLUMNS}",
                (ref_id,),
            ).fetchone()
            if row is None:
                return None  # not deleted
            c.execute(pg(sql.REVIVE_OBJECT), (obj["hash"],))
        return sql.reference_from_row(row)

    def live_references(self, hash: str) -> list[ReferenceRecord]:
        if not _storable(hash):
            return []
        rows = self._query(
            pg(sql.SELECT_REFERENCE + " WHERE hash = ? AND deleted_at IS NULL ORDER BY seq"),
            (hash,),
        )
        return [sql.reference_from_row(r) for r in rows]

    # --- variants --------------------------------------------------------------------------
    def add_variant(self, hash: str, key: str, size: int, content_type: str, now: float) -> None:
        self._execute(
            "INSERT INTO variants (hash, key, size, content_type, created_at) "
            "VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (hash, key) DO UPDATE SET size = excluded.size",
            (hash, key, size, content_type, now),
        )

    def list_variants(self, hash: str) -> list[VariantRecord]:
        if not _storable(hash):
            return []
        rows = self._query(
            "SELECT hash, key, size, content_type, created_at FROM variants "
            "WHERE hash = %s ORDER BY key",
            (hash,),
        )
        return [VariantRecord(**r) for r in rows]

    def list_variants_many(self, hashes: list[str]) -> dict[str, list[VariantRecord]]:
        found: dict[str, list[VariantRecord]] = {h: [] for h in hashes}
        wanted = [h for h in found if _storable(h)]
        if wanted:
            for r in self._query(LIST_VARIANTS_MANY, (wanted,)):
                found[r["hash"]].append(VariantRecord(**r))
        return found


def _configure(conn: psycopg.Connection) -> None:
    """Per new connection: bounded waits, so a stuck lock is an error and never a hang."""
    conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
    conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
