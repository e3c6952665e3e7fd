"""Copy a SQLite store's metadata into PostgreSQL (``image-origin copy-metadata``).

How a single machine grows into several nodes without re-uploading: objects, references,
variant rows and reconcile's findings move as they are, with their ids, reference ``seq``,
timestamps, tiers and marks. Bytes do not move here: the new nodes must read the same blobs
(the same S3 bucket, or a copy of the local blob folder; see the README).

- The source is read in one read transaction (a consistent snapshot, even if a node is still
  running on it), through a read-only connection: the source is never written.
- The target is migrated first, then written in batches, each batch one short transaction that
  goes through a temporary table filled with COPY.
- Every row is keyed by its natural id (hash, reference id, (hash, key)), and a row already in
  the target is skipped, so running the copy again never duplicates anything.
- ``ref_count`` is never copied blindly: each object's count is raised by the live references
  actually inserted, in the transaction that inserts them. It therefore equals the number of
  live references, also when merging into a target that already has some (``merge=True``);
  objects whose source count disagreed with their live references are reported.
- Into an empty target, references keep their ``seq`` (so listings keep their order); when
  merging, copied references get new ``seq`` values after the target's, in source order.
- A lease held by a GC run in the old store means nothing in the new one and is not copied.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import sql as pgsql

from app.metadata.base import MetadataError
from app.metadata.postgres import PostgresMetadataStore
from app.metadata.postgres_migrations import names as postgres_migration_names

SQLITE_MIGRATION_SET = "image-origin"
NEVER_COPIED = {"gc_token", "gc_lease_until"}  # a lease belongs to the store it was taken in


class CopyError(MetadataError):
    """The copy cannot start or cannot go on; nothing of the failed batch was written."""


@dataclass
class CopySummary:
    copied: dict[str, int] = field(default_factory=dict)  # rows inserted, per table
    present: dict[str, int] = field(default_factory=dict)  # rows already in the target
    orphan_references: int = 0  # references in the source whose object row is missing
    ref_count_corrected: int = 0  # source objects whose ref_count != their live references
    mismatched_after: int = 0  # target objects whose ref_count != live references (want 0)
    seconds: float = 0.0

    def line(self) -> str:
        parts = [f"{self.copied.get(t, 0)} {t}" for t in ("objects", "refs", "variants", "damage")]
        text = "copy-metadata: copied " + ", ".join(parts)
        present = sum(self.present.values())
        if present:
            text += f"; {present} rows were already there"
        if self.orphan_references:
            text += f"; skipped {self.orphan_references} references without an object row"
        if self.ref_count_corrected:
            text += f"; {self.ref_count_corrected} ref_count values corrected to the live count"
        return text + f" in {self.seconds:.1f}s"


Progress = Callable[[str, int], None]  # (table, rows handled so far in that table)


def sqlite_path(url: str) -> str:
    if not url.startswith("sqlite:///"):
        raise CopyError(f"the source must be a sqlite:/// URL, not {url.split(':', 1)[0]}:")
    return url[len("sqlite:///") :]


def copy_sqlite_to_postgres(
    source_url: str,
    target: PostgresMetadataStore,
    *,
    merge: bool = False,
    batch: int = 1000,
    progress: Progress | None = None,
) -> CopySummary:
    started = time.monotonic()
    source = _open_source(sqlite_path(source_url))
    try:
        source.execute("BEGIN")  # one snapshot for the whole copy
        _check_source_history(source)
        target.migrate()
        empty = _target_is_empty(target)
        if not empty and not merge:
            raise CopyError(
                "the target database already holds metadata; use --merge to add to it "
                "(rows already there are skipped)"
            )
        summary = CopySummary()
        summary.ref_count_corrected = _count_drift(source)
        summary.orphan_references = _scalar(
            source,
            "SELECT COUNT(*) FROM refs r WHERE NOT EXISTS "
            "(SELECT 1 FROM objects o WHERE o.hash = r.hash)",
        )
        _copy_objects(source, target, summary, batch, progress)
        _copy_refs(source, target, summary, batch, progress, keep_seq=empty)
        _copy_keyed(source, target, summary, batch, progress, "variants", ("hash", "key"))
        if _has_table(source, "damage"):
            _copy_keyed(source, target, summary, batch, progress, "damage", ("hash", "kind"))
        summary.mismatched_after = _target_mismatches(target)
        summary.seconds = time.monotonic() - started
        return summary
    finally:
        source.close()


# --- the source ----------------------------------------------------------------------------------
def _open_source(path: str) -> sqlite3.Connection:
    if not Path(path).is_file():
        raise CopyError(f"no SQLite database at {path}")
    conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 15000")
    return conn


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def _scalar(conn: sqlite3.Connection, query: str) -> int:
    return int(conn.execute(query).fetchone()[0])


def _check_source_history(conn: sqlite3.Connection) -> None:
    if not _has_table(conn, "_sqlite_migrations") or not _has_table(conn, "objects"):
        raise CopyError("the source is not an image-origin SQLite database")
    applied = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = ?",
            (SQLITE_MIGRATION_SET,),
        )
    ]
    unknown = sorted(set(applied) - set(postgres_migration_names()))
    if unknown:
        raise CopyError(
            "the source has migrations this version does not know "
            f"({', '.join(unknown)}): upgrade image-origin first"
        )


def _source_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r["name"] for r in conn.execute(f"PRAGMA table_info({table})")]  # constant names


def _count_drift(conn: sqlite3.Connection) -> int:
    return _scalar(
        conn,
        "SELECT COUNT(*) FROM objects o WHERE o.ref_count <> (SELECT COUNT(*) FROM refs r "
        "WHERE r.hash = o.hash AND r.deleted_at IS NULL)",
    )


def _keyset(
    conn: sqlite3.Connection, table: str, columns: list[str], key: tuple[str, ...], batch: int
) -> Iterator[list[tuple[Any, ...]]]:
    """Rows of ``table`` in batches by ``key``, strictly increasing (names are constants)."""
    cols = ", ".join(columns)
    order = ", ".join(key)
    last: tuple[Any, ...] | None = None
    while True:
        if last is None:
            where, params = "", ()
        else:
            where = f"WHERE ({order}) > ({', '.join('?' * len(key))})"
            params = last
        rows = conn.execute(
            f"SELECT {cols} FROM {table} {where} ORDER BY {order} LIMIT ?",  # noqa: S608
            (*params, batch),
        ).fetchall()
        if not rows:
            return
        yield [tuple(r) for r in rows]
        last = tuple(rows[-1][k] for k in key)


# --- the target ----------------------------------------------------------------------------------
def _target_columns(target: PostgresMetadataStore, table: str) -> list[str]:
    with target.transaction() as c:
        rows = c.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
            (table,),
        ).fetchall()
    return [r["column_name"] for r in rows]


def _target_is_empty(target: PostgresMetadataStore) -> bool:
    with target.transaction() as c:
        row = c.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM objects) AND NOT EXISTS (SELECT 1 FROM refs) AS empty"
        ).fetchone()
    return bool(row and row["empty"])


def _target_mismatches(target: PostgresMetadataStore) -> int:
    with target.transaction() as c:
        row = c.execute(
            "SELECT COUNT(*) AS n FROM objects o WHERE o.ref_count <> (SELECT COUNT(*) "
            "FROM refs r WHERE r.hash = o.hash AND r.deleted_at IS NULL)"
        ).fetchone()
    return int(row["n"]) if row else 0


def _shared_columns(
    source: sqlite3.Connection, target: PostgresMetadataStore, table: str, skip: set[str]
) -> list[str]:
    theirs = set(_source_columns(source, table))
    return [c for c in _target_columns(target, table) if c in theirs and c not in skip]


def _stage(conn: Any, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    """COPY ``rows`` into a temporary twin of ``table`` that lives until the commit."""
    stage = pgsql.Identifier(f"stage_{table}")
    conn.execute(
        pgsql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
            stage, pgsql.Identifier(table)
        )
    )
    statement = pgsql.SQL("COPY {} ({}) FROM STDIN").format(
        stage, pgsql.SQL(", ").join(map(pgsql.Identifier, columns))
    )
    with conn.cursor().copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def _count(summary: CopySummary, table: str, handled: int, inserted: int) -> None:
    summary.copied[table] = summary.copied.get(table, 0) + inserted
    summary.present[table] = summary.present.get(table, 0) + handled - inserted


def _copy_objects(
    source: sqlite3.Connection,
    target: PostgresMetadataStore,
    summary: CopySummary,
    batch: int,
    progress: Progress | None,
) -> None:
    # ref_count starts at 0 and rises with each live reference inserted (see the module doc).
    columns = _shared_columns(source, target, "objects", NEVER_COPIED | {"ref_count"})
    names = pgsql.SQL(", ").join(map(pgsql.Identifier, columns))
    insert = pgsql.SQL(
        "INSERT INTO objects ({names}, ref_count) SELECT {names}, 0 FROM stage_objects "
        "ON CONFLICT (hash) DO NOTHING"
    ).format(names=names)
    handled = 0
    for rows in _keyset(source, "objects", columns, ("hash",), batch):
        with target.transaction() as c:
            _stage(c, "objects", columns, rows)
            inserted = c.execute(insert).rowcount
        handled += len(rows)
        _count(summary, "objects", len(rows), inserted)
        if progress:
            progress("objects", handled)


def _copy_refs(
    source: sqlite3.Connection,
    target: PostgresMetadataStore,
    summary: CopySummary,
    batch: int,
    progress: Progress | None,
    *,
    keep_seq: bool,
) -> None:
    columns = _shared_columns(source, target, "refs", set())
    kept = [c for c in columns if keep_seq or c != "seq"]
    names = pgsql.SQL(", ").join(map(pgsql.Identifier, kept))
    staged = pgsql.SQL(", ").join(pgsql.Identifier("s", c) for c in kept)
    # Objects first, then refs (the store's lock order): lock the batch's object rows, refuse
    # if GC holds one, insert the new references and raise each count by its live ones.
    statement = pgsql.SQL(
        "WITH ins AS (INSERT INTO refs ({names}) SELECT {staged} FROM stage_refs s "
        "JOIN objects o ON o.hash = s.hash ORDER BY s.seq "
        "ON CONFLICT (id) DO NOTHING RETURNING hash, deleted_at), "
        "live AS (SELECT hash, COUNT(*) AS n FROM ins WHERE deleted_at IS NULL GROUP BY hash), "
        "bump AS (UPDATE objects o SET ref_count = o.ref_count + live.n, deleted_at = NULL, "
        "gc_token = NULL, gc_lease_until = NULL FROM live WHERE o.hash = live.hash RETURNING 1) "
        "SELECT (SELECT COUNT(*) FROM ins) AS inserted, (SELECT COUNT(*) FROM bump) AS bumped"
    ).format(names=names, staged=staged)
    handled = 0
    hash_at = columns.index("hash")
    for rows in _keyset(source, "refs", columns, ("seq",), batch):
        with target.transaction() as c:
            _stage(c, "refs", columns, rows)
            locked = c.execute(
                "SELECT hash, gc_token IS NOT NULL AND COALESCE(gc_lease_until, 0) > %s "
                "AS claimed FROM objects WHERE hash IN (SELECT hash FROM stage_refs) "
                "ORDER BY hash FOR UPDATE",
                (time.time(),),
            ).fetchall()
            if any(r["claimed"] for r in locked):
                raise CopyError(
                    "the target's garbage collector is collecting some of this content right "
                    "now; run the copy again with --merge (copied rows are skipped)"
                )
            result = c.execute(statement).fetchone()
            c.execute(
                "SELECT setval(pg_get_serial_sequence('refs', 'seq'), "
                "GREATEST((SELECT MAX(seq) FROM refs), 1))"
            )
        inserted = int(result["inserted"]) if result else 0
        known = {r["hash"] for r in locked}
        orphans = sum(1 for r in rows if r[hash_at] not in known)
        handled += len(rows)
        _count(summary, "refs", len(rows) - orphans, inserted)
        if progress:
            progress("refs", handled)


def _copy_keyed(
    source: sqlite3.Connection,
    target: PostgresMetadataStore,
    summary: CopySummary,
    batch: int,
    progress: Progress | None,
    table: str,
    key: tuple[str, str],
) -> None:
    columns = _shared_columns(source, target, table, set())
    if not columns:
        return
    names = pgsql.SQL(", ").join(map(pgsql.Identifier, columns))
    insert = pgsql.SQL(
        "INSERT INTO {table} ({names}) SELECT {names} FROM {stage} "
        "ON CONFLICT ({k0}, {k1}) DO NOTHING"
    ).format(
        table=pgsql.Identifier(table),
        names=names,
        stage=pgsql.Identifier(f"stage_{table}"),
        k0=pgsql.Identifier(key[0]),
        k1=pgsql.Identifier(key[1]),
    )
    handled = 0
    for rows in _keyset(source, table, columns, key, batch):
        with target.transaction() as c:
            _stage(c, table, columns, rows)
            inserted = c.execute(insert).rowcount
        handled += len(rows)
        _count(summary, table, len(rows), inserted)
        if progress:
            progress(table, handled)
