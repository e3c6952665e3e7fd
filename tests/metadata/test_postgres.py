"""What only the PostgreSQL backend has: migrations under an advisory lock, SKIP LOCKED claims,
a per-process pool that survives a fork and a server restart, URL handling, bounded waits."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from app.metadata import MetadataError, open_metadata_store
from app.metadata.postgres import PostgresMetadataStore
from app.metadata.postgres_migrations import names
from tests import servers
from tests.conftest import make_settings
from tests.metadata.test_contract import NOW, add, content
from tests.metadata.test_lifecycle_contract import deleted_object


@pytest.fixture
def pg(pg_url: str) -> PostgresMetadataStore:
    store = PostgresMetadataStore(pg_url)
    store.migrate()
    yield store
    store.close()


def test_selected_by_url_scheme(pg_url, data_dir):
    for url in (pg_url, pg_url.replace("postgresql://", "postgres://", 1)):
        store = open_metadata_store(make_settings(data_dir, database_url=url))
        try:
            assert isinstance(store, PostgresMetadataStore)
            store.migrate()
            store.ping()
        finally:
            store.close()


def test_repr_never_shows_the_password():
    store = PostgresMetadataStore("postgresql://u:s3cret@db.example:5433/images")
    assert "s3cret" not in repr(store) and "db.example:5433/images" in repr(store)


def test_concurrent_migrations_take_turns(pg_url):
    stores = [PostgresMetadataStore(pg_url) for _ in range(6)]
    try:
        start = threading.Barrier(6)

        def migrate(store: PostgresMetadataStore) -> list[str]:
            start.wait()
            return store.migrate()

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(migrate, stores))
        assert sorted(n for r in results for n in r) == sorted(names())
        assert stores[0].applied_migrations() == sorted(names())
    finally:
        for s in stores:
            s.close()


def test_migrate_command_applies_then_reports_nothing(pg_url, data_dir, monkeypatch):
    from click.testing import CliRunner

    from app.cli import main
    from tests.conftest import base_env

    for key, value in base_env(data_dir, IMAGE_ORIGIN_DATABASE_URL=pg_url).items():
        monkeypatch.setenv(key, value)
    first = CliRunner().invoke(main, ["migrate"])
    assert first.exit_code == 0, first.output
    assert f"applied {len(names())} migration(s)" in first.output
    second = CliRunner().invoke(main, ["migrate"])
    assert second.exit_code == 0 and "applied 0 migration(s)" in second.output


def test_gc_claim_skips_a_row_another_transaction_holds(pg, pg_url):
    """FOR UPDATE SKIP LOCKED: while an upload (here: any transaction) holds the object row,
    a collector does not wait for it; it just does not claim it this time."""
    info = deleted_object(pg, "locked", NOW + 1)
    other = PostgresMetadataStore(pg_url)
    try:
        with pg.transaction() as c:
            c.execute("SELECT 1 FROM objects WHERE hash = %s FOR UPDATE", (info.hash,))
            started = time.monotonic()
            claimed = other.gc_claim(
                info.hash, "t", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70
            )
            assert not claimed and time.monotonic() - started < 2
        assert other.gc_claim(info.hash, "t", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70)
    finally:
        other.close()


def test_gc_claim_many_skips_the_rows_another_transaction_holds(pg, pg_url):
    """The batch claim is the one-object claim's SKIP LOCKED for every row: a row an upload
    holds right now is left out (not waited for), the others are claimed."""
    infos = [deleted_object(pg, f"blocked{i}", NOW + 1) for i in range(3)]
    hashes = [i.hash for i in infos]
    other = PostgresMetadataStore(pg_url)
    args = {"now": NOW + 10, "cutoff": NOW + 5, "lease_until": NOW + 70}
    try:
        with pg.transaction() as c:
            c.execute("SELECT 1 FROM objects WHERE hash = %s FOR UPDATE", (hashes[1],))
            started = time.monotonic()
            claimed = other.gc_claim_many(hashes, "t", **args)
            assert claimed == {hashes[0], hashes[2]} and time.monotonic() - started < 2
        assert other.gc_claim_many(hashes, "u", **args) == {hashes[1]}
    finally:
        other.close()


def test_a_held_lock_is_an_error_after_the_lock_timeout_not_a_hang(pg, pg_url, monkeypatch):
    import app.metadata.postgres as postgres

    monkeypatch.setattr(postgres, "LOCK_TIMEOUT_MS", 300)
    info = content("stuck")
    add(pg, info, "img_1")
    other = PostgresMetadataStore(pg_url)
    try:
        with pg.transaction() as c:
            c.execute("SELECT 1 FROM objects WHERE hash = %s FOR UPDATE", (info.hash,))
            with pytest.raises(MetadataError):
                add(other, info, "img_2", blob_written=False)
    finally:
        other.close()
    assert pg.get_object(info.hash).ref_count == 1


def test_unreachable_database_is_a_metadata_error_quickly():
    port = servers.free_port()
    store = PostgresMetadataStore(f"postgresql://postgres@127.0.0.1:{port}/x", timeout=1)
    try:
        started = time.monotonic()
        with pytest.raises(MetadataError):
            store.ping()
        with pytest.raises(MetadataError):
            store.get_object("0" * 64)
        assert time.monotonic() - started < 10
    finally:
        store.close()


def test_pool_survives_a_server_restart(pg_url, pg_server):
    pg = PostgresMetadataStore(pg_url, timeout=1)
    pg.migrate()
    info = content("restart")
    add(pg, info, "img_1")
    pg_server.stop()
    try:
        with pytest.raises(MetadataError):
            pg.get_object(info.hash)
    finally:
        pg_server.start()
    # Broken connections are checked and replaced: the next call simply works.
    try:
        servers.wait_for(lambda: pg.get_object(info.hash) is not None, timeout=20, what="pool")
        assert pg.get_object(info.hash).ref_count == 1
    finally:
        pg.close()


def _child_uses_store(store: PostgresMetadataStore, digest: str, queue) -> None:  # type: ignore[no-untyped-def]
    try:
        obj = store.get_object(digest)
        add(store, content("from-child"), "img_child")
        queue.put(obj.ref_count if obj else None)
    except Exception as exc:  # pragma: no cover - reported to the parent
        queue.put(repr(exc))


def test_a_forked_child_gets_its_own_pool(pg):
    """The parent's pool and sockets are never used (or closed) by a child."""
    info = content("fork")
    add(pg, info, "img_1")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_uses_store, args=(pg, info.hash, queue))
    child.start()
    child.join(30)
    assert queue.get(timeout=5) == 1
    assert child.exitcode == 0
    # The parent's connections still work after the child exited.
    assert pg.get_object(info.hash).ref_count == 1
    assert pg.get_reference("img_child") is not None


def test_pool_is_bounded_and_waits_are_bounded(pg_url):
    store = PostgresMetadataStore(pg_url, min_size=1, max_size=2, timeout=0.5)
    store.migrate()
    try:
        with store.transaction(), store.transaction():
            with pytest.raises(MetadataError):
                store.get_object("0" * 64)  # no free connection within the timeout
        assert store.get_object("0" * 64) is None
    finally:
        store.close()


def test_schema_uses_byte_order_for_hashes(pg):
    """Listing by hash must page identically on every cluster locale (SQLite compares bytes)."""
    with pg.transaction() as c:
        rows = c.execute(
            "SELECT table_name, collation_name FROM information_schema.columns "
            "WHERE column_name = 'hash' AND table_schema = current_schema()"
        ).fetchall()
    assert {r["table_name"]: r["collation_name"] for r in rows} == {
        "objects": "C",
        "refs": "C",
        "variants": "C",
        "damage": "C",
    }


def test_no_connection_leaks_after_many_calls(pg, pg_url):
    for i in range(50):
        add(pg, content(f"leak{i}"), f"img_{i}")
        pg.get_object(content(f"leak{i}").hash)
    dbname = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        (count,) = admin.execute(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = %s "
            "AND application_name = 'image-origin'",
            (dbname,),
        ).fetchone()
    assert 1 <= count <= 10
