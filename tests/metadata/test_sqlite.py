"""What only the SQLite backend has: which commits sync the WAL, the bulk session's pragmas, and
query plans that keep gc's and tier's pages proportional to the page, not to the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.metadata import sql
from app.metadata.sqlite import (
    BULK_CACHE_KIB,
    BULK_WAL_AUTOCHECKPOINT_PAGES,
    SqliteMetadataStore,
)
from tests.metadata.test_contract import NOW
from tests.metadata.test_lifecycle_contract import deleted_object


@pytest.fixture
def lite(tmp_path: Path) -> SqliteMetadataStore:
    store = SqliteMetadataStore(str(tmp_path / "metadata.db"))
    store.migrate()
    yield store
    store.close()


def _statements(store: SqliteMetadataStore) -> list[str]:
    seen: list[str] = []
    store._conn().set_trace_callback(seen.append)
    return seen


def _pragma(store: SqliteMetadataStore, name: str) -> int:
    return int(store._conn().execute(f"PRAGMA {name}").fetchone()[0])


def test_the_marking_renewal_syncs_the_wal_and_nothing_else_does(lite):
    """A mark lost to a power failure after the blob's deletion reached the disk would leave an
    unmarked row without its blob: that one commit runs with synchronous=FULL."""
    infos = [deleted_object(lite, f"sync{i}", NOW + 1) for i in range(3)]
    hashes = [i.hash for i in infos]
    args = {"now": NOW + 10, "margin": 1.0, "lease_until": NOW + 70}
    assert lite.gc_claim_many(hashes, "t", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70)
    seen = _statements(lite)
    assert lite.gc_renew_many(hashes, "t", **args) == set(hashes)
    assert not any("synchronous" in s for s in seen)
    seen.clear()
    assert lite.gc_renew_many(hashes, "t", **args, mark_blob_missing=True) == set(hashes)
    order = [s for s in seen if "synchronous" in s or s in ("BEGIN IMMEDIATE", "COMMIT")]
    assert order == [
        "PRAGMA synchronous=FULL",
        "BEGIN IMMEDIATE",
        "COMMIT",
        "PRAGMA synchronous=NORMAL",
    ]
    assert _pragma(lite, "synchronous") == 1  # NORMAL again
    seen.clear()
    assert lite.gc_finish_many(hashes, "t", now=NOW + 20) == set(hashes)
    assert seen.count("COMMIT") == 1 and not any("synchronous" in s for s in seen)


def test_a_batch_is_one_transaction(lite):
    infos = [deleted_object(lite, f"one{i}", NOW + 1) for i in range(5)]
    seen = _statements(lite)
    lite.gc_claim_many(
        [i.hash for i in infos], "t", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70
    )
    assert seen.count("BEGIN IMMEDIATE") == 1 and seen.count("COMMIT") == 1


def test_bulk_tunes_the_connection_and_puts_it_back(lite):
    before = (_pragma(lite, "cache_size"), _pragma(lite, "wal_autocheckpoint"))
    with lite.bulk():
        assert _pragma(lite, "cache_size") == -BULK_CACHE_KIB
        assert _pragma(lite, "wal_autocheckpoint") == BULK_WAL_AUTOCHECKPOINT_PAGES
        assert _pragma(lite, "synchronous") == 1  # durability unchanged
    assert (_pragma(lite, "cache_size"), _pragma(lite, "wal_autocheckpoint")) == before


@pytest.mark.parametrize("query", [sql.GC_CANDIDATES, sql.TIER_CANDIDATES])
def test_candidate_pages_read_their_index_in_order(lite, query):
    """No sort of the remaining candidates for every page (quadratic over a run when many
    share a timestamp): the index alone gives (timestamp, hash) order."""
    plan = lite._conn().execute("EXPLAIN QUERY PLAN " + query, (NOW, 0, 0, "", 500)).fetchall()
    details = " | ".join(row["detail"] for row in plan)
    assert "TEMP B-TREE" not in details, details
    assert "idx_objects_gc" in details or "idx_objects_access" in details, details


@pytest.mark.parametrize(
    "query",
    [sql.GC_CLAIM, sql.GC_RENEW, sql.GC_RENEW_MARK, sql.GC_FINISH_CHECK, sql.SET_TIER],
)
def test_the_statements_a_batch_repeats_look_up_one_row_by_key(lite, query):
    params = (None,) * query.count("?")
    plan = lite._conn().execute("EXPLAIN QUERY PLAN " + query, params).fetchall()
    assert "sqlite_autoindex_objects_1 (hash=?)" in plan[0]["detail"], plan[0]["detail"]
