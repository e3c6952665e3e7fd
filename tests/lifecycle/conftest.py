"""Helpers for the data-lifecycle tests: uploads without HTTP, a controllable clock, paths of
blobs on the local store, raw SQL on the metadata database (SQLite or PostgreSQL, whichever the
app uses), and the CLI in-process (click's runner) or as real processes.

The tests run here on SQLite and again on PostgreSQL from
tests/multinode/test_lifecycle_on_postgres.py, which points ``base_env`` at a fresh database.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from app.cli import main
from app.imaging.variants import parse_variant
from app.settings import load
from app.variant_service import variant_storage_key
from tests import images
from tests.conftest import base_env
from tests.waiting import wait_stored  # noqa: F401 - re-exported for the lifecycle tests

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    """Time that moves only when told: lets a test pause a worker "past its lease"."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def content(seed: int, size: int = 48) -> bytes:
    return images.png(size, size, seed=seed, mode="RGB")


def ingest(services: Any, data: bytes, *, owner: str = "alice", private: bool = False) -> Any:
    """An upload through the service (what POST /v1/images does), from any thread."""
    staged = services.service.new_staging_file()
    try:
        staged.write(data)
        return services.service.ingest(staged, owner=owner, filename=None, private=private)
    finally:
        staged.discard()


def delete_all(services: Any, digest: str) -> None:
    for ref in services.meta.live_references(digest):
        services.service.delete(ref.owner, ref.id)


def make_variant(services: Any, digest: str, spec: str = "webp/high/160") -> str:
    """Render and store one variant; returns its storage key."""
    fmt, quality, width = spec.split("/")
    parsed = parse_variant(fmt, quality, width, services.settings)
    obj = services.meta.get_object(digest)
    services.service.get_variant(obj, parsed)
    key = variant_storage_key(digest, parsed, services.settings)
    wait_stored(services, digest, key)
    return key


def blob_path(data_dir: Path, digest: str, cold: bool = False) -> Path:
    base = data_dir / ("cold" if cold else "blobs")
    return base / "sha256" / digest[:2] / digest[2:4] / digest


def variant_files(data_dir: Path, digest: str, cold: bool = False) -> list[Path]:
    base = data_dir / ("cold" if cold else "blobs") / "variants" / digest[:2] / digest[2:4]
    d = base / digest
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RawDB:
    """A raw connection to the app's metadata database, for tests that damage the metadata on
    purpose. The same SQL on both backends: ``?`` placeholders, rows read by column name.
    Autocommit (each statement commits), closed when its ``with`` block ends."""

    def __init__(self, url: str) -> None:
        self.postgres = not url.startswith("sqlite:///")
        self.conn: Any
        if self.postgres:
            import psycopg
            from psycopg.rows import dict_row

            self.conn = psycopg.connect(url, autocommit=True, row_factory=dict_row)
        else:
            self.conn = sqlite3.connect(url[len("sqlite:///") :], isolation_level=None, timeout=15)
            self.conn.row_factory = sqlite3.Row

    def execute(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        return self.conn.execute(query.replace("?", "%s") if self.postgres else query, params)

    def foreign_keys_off(self) -> None:
        """Let this connection write rows that break the foreign keys (damage on purpose)."""
        if self.postgres:  # FK checks are triggers, which the replica role does not fire
            self.execute("SET session_replication_role = replica")
        else:
            self.execute("PRAGMA foreign_keys = OFF")

    @contextlib.contextmanager
    def writes_blocked(self) -> Iterator[None]:
        """Hold the database's write lock (readers go on): SQLite's BEGIN IMMEDIATE, or for
        PostgreSQL a LOCK TABLE on objects in a held transaction (plain reads go on; UPDATE and
        SELECT ... FOR UPDATE queue). Writers wait, up to their busy/lock timeout of 15 s."""
        if self.postgres:
            self.execute("BEGIN")
            self.execute("LOCK TABLE objects IN EXCLUSIVE MODE")
        else:
            self.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            self.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RawDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def db(where: Any) -> RawDB:
    """A raw connection to the metadata database (SQLite or PostgreSQL) that ``where`` uses:
    the services, or a data dir (the database its settings from ``base_env`` name)."""
    if isinstance(where, Path):
        return RawDB(load(base_env(where)).resolved_database_url)
    return RawDB(where.settings.resolved_database_url)


def age(path: Path, seconds: float) -> None:
    """Make a file look ``seconds`` older (orphans are judged by their modification time)."""
    st = path.stat()
    os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


@pytest.fixture
def cli(data_dir: Path) -> Callable[..., Result]:
    """``cli("gc", "--grace", "0", env={...})``: the console script in this process."""

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        full = base_env(data_dir, **(env or {}))
        return CliRunner().invoke(main, list(args), env=full, catch_exceptions=False)

    return run


def spawn(data_dir: Path, *args: str, **env: str) -> subprocess.Popen:
    """The real console script in its own process."""
    script = Path(sys.executable).parent / "image-origin"
    full = {**os.environ, **base_env(data_dir, **env)}
    return subprocess.Popen(
        [str(script), *args],
        cwd=ROOT,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
