"""Schema migrations for SQLite, recorded by sqlite-utils' Migrations so each runs once."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("image-origin")


@migrations()
def m001_initial(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE objects (
            hash TEXT PRIMARY KEY,
            mime_type TEXT NOT NULL,
            size INTEGER NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            ref_count INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            last_accessed_at REAL,
            deleted_at REAL,
            tier TEXT NOT NULL DEFAULT 'hot',
            integrity_failed_at REAL,
            blob_missing_at REAL,
            gc_token TEXT,
            gc_lease_until REAL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE refs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            hash TEXT NOT NULL REFERENCES objects(hash),
            owner TEXT NOT NULL,
            original_filename TEXT,
            private INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            deleted_at REAL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE variants (
            hash TEXT NOT NULL,
            key TEXT NOT NULL,
            size INTEGER NOT NULL,
            content_type TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (hash, key)
        )
        """
    )
    # GC scan: ref_count = 0 ordered by deleted_at; tiering scan: last_accessed_at;
    # listing by owner newest first; privacy and recount by hash.
    db.execute("CREATE INDEX idx_objects_gc ON objects (ref_count, deleted_at)")
    db.execute("CREATE INDEX idx_objects_access ON objects (tier, last_accessed_at)")
    db.execute("CREATE INDEX idx_refs_owner ON refs (owner, deleted_at, seq)")
    db.execute("CREATE INDEX idx_refs_hash ON refs (hash, deleted_at, private)")


@migrations()
def m002_lifecycle(db: Database) -> None:
    """Reconcile's findings (GC refuses while any is unreviewed) and verify's --since scan."""
    db.execute(
        """
        CREATE TABLE damage (
            hash TEXT NOT NULL,
            kind TEXT NOT NULL,
            found_at REAL NOT NULL,
            detail TEXT NOT NULL DEFAULT '',
            reviewed_at REAL,
            resolved_at REAL,
            PRIMARY KEY (hash, kind)
        )
        """
    )
    db.execute("CREATE INDEX idx_damage_open ON damage (resolved_at, reviewed_at)")
    db.execute("CREATE INDEX idx_objects_created ON objects (created_at)")


@migrations()
def m003_keyset_indexes(db: Database) -> None:
    """gc and tier page their candidates by (deleted_at, hash) and (last_accessed_at, hash).
    With hash in the index a page is one range read in index order; without it, objects that
    share a timestamp were sorted again for every page, so a run over many of them (a bulk
    import or delete) took time quadratic in their number."""
    db.execute("DROP INDEX idx_objects_gc")
    db.execute("CREATE INDEX idx_objects_gc ON objects (ref_count, deleted_at, hash)")
    db.execute("DROP INDEX idx_objects_access")
    db.execute("CREATE INDEX idx_objects_access ON objects (tier, last_accessed_at, hash)")
