"""``image-origin copy-metadata``: a SQLite store's metadata moves into PostgreSQL intact, and
the same data dir's blobs are then served by a node on PostgreSQL without re-uploading."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import main
from app.metadata.copy import CopyError, copy_sqlite_to_postgres
from app.metadata.postgres import PostgresMetadataStore
from app.metadata.sqlite import SqliteMetadataStore
from tests.metadata.test_contract import NOW, add, content
from tests.metadata.test_lifecycle_contract import deleted_object, raw


@pytest.fixture
def source(tmp_path: Path) -> SqliteMetadataStore:
    store = SqliteMetadataStore(str(tmp_path / "metadata.db"))
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def target(pg_url: str) -> PostgresMetadataStore:
    store = PostgresMetadataStore(pg_url)
    yield store
    store.close()


def url(store: SqliteMetadataStore) -> str:
    return f"sqlite:///{store.path}"


def fill(store: SqliteMetadataStore) -> list[str]:
    """Every kind of row and mark; returns the hashes."""
    shared, private, idle, broken = (content(s) for s in ("shared", "private", "idle", "broken"))
    for i in range(30):  # enough to span several batches
        add(store, shared, f"img_s{i:02d}", owner="alice" if i % 3 else "bob", now=NOW + i)
    add(store, private, "img_p", private=True, filename=None, now=NOW + 40)
    add(store, idle, "img_idle", now=NOW + 41)
    add(store, broken, "img_broken", now=NOW + 42)
    store.delete_reference("img_s05", "alice", NOW + 50)
    store.delete_reference("img_s00", "bob", NOW + 51)
    pending = deleted_object(store, "pending", NOW + 52)  # ref_count 0, waiting for GC
    leased = deleted_object(store, "leased", NOW + 53)
    assert store.gc_claim(leased.hash, "tok", now=NOW + 60, cutoff=NOW + 55, lease_until=NOW + 9e9)
    store.set_object_tier(idle.hash, "cold")
    store.record_access(shared.hash, NOW + 5000, 3600)
    store.mark_integrity_failure(broken.hash, NOW + 70)
    store.mark_blob_missing(broken.hash, NOW + 71)
    for fmt in ("webp", "avif"):
        store.add_variant(shared.hash, f"variant:{shared.hash}/v1-0/{fmt}/high", 99, "x", NOW)
    store.record_damage(broken.hash, "blob_missing", NOW + 72, "found by verify")
    store.review_damage(broken.hash, NOW + 73)
    return [shared.hash, private.hash, idle.hash, broken.hash, pending.hash, leased.hash]


def all_refs(store, owner: str) -> list:  # type: ignore[no-untyped-def]
    refs, cursor = [], None
    while True:
        page = store.list_references(owner, 7, cursor)
        refs += page.items
        if (cursor := page.next_cursor) is None:
            return refs


def without_lease(obj):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(obj, gc_token=None, gc_lease_until=None)


def test_copy_keeps_every_row_and_mark(source, target):
    hashes = fill(source)
    summary = copy_sqlite_to_postgres(url(source), target, batch=4)
    assert summary.copied == {"objects": 6, "refs": 35, "variants": 2, "damage": 1}
    assert sum(summary.present.values()) == 0
    assert summary.ref_count_corrected == 0 and summary.mismatched_after == 0
    for digest in hashes:
        assert target.get_object(digest) == without_lease(source.get_object(digest))
        assert target.live_references(digest) == source.live_references(digest)
        assert target.list_variants(digest) == source.list_variants(digest)
    for owner in ("alice", "bob"):
        assert all_refs(target, owner) == all_refs(source, owner)  # ids, seq, order, times
    deleted = source.get_reference("img_s05")
    assert target.get_reference("img_s05") == deleted and deleted.deleted_at == NOW + 50
    assert target.list_damage(open_only=False) == source.list_damage(open_only=False)
    assert [o.hash for o in target.iter_objects()] == [o.hash for o in source.iter_objects()]
    # New references continue after the copied ones: newest first stays right.
    ref, _ = add(target, content("after"), "img_after", now=NOW + 99)
    assert ref.seq > max(r.seq for r in all_refs(source, "alice"))
    assert all_refs(target, "alice")[0].id == "img_after"


def test_copy_refuses_a_non_empty_target_then_merges_idempotently(source, target):
    fill(source)
    first = copy_sqlite_to_postgres(url(source), target)
    before = {o.hash: o for o in target.iter_objects()}
    with pytest.raises(CopyError, match="--merge"):
        copy_sqlite_to_postgres(url(source), target)
    again = copy_sqlite_to_postgres(url(source), target, merge=True, batch=3)
    assert sum(again.copied.values()) == 0
    assert again.present == first.copied
    assert {o.hash: o for o in target.iter_objects()} == before


def test_merge_adds_to_a_target_in_use(source, target):
    target.migrate()
    shared = content("shared")
    add(target, shared, "img_target1", now=NOW)  # the same content, uploaded to the new cluster
    add(target, content("own"), "img_target2", now=NOW + 1)
    add(source, shared, "img_src1", now=NOW - 10)
    add(source, shared, "img_src2", blob_written=False, now=NOW - 9)
    add(source, content("only-src"), "img_src3", now=NOW - 8)
    summary = copy_sqlite_to_postgres(url(source), target, merge=True)
    assert summary.copied["refs"] == 3 and summary.present["objects"] == 1
    assert target.get_object(shared.hash).ref_count == 3
    assert summary.mismatched_after == 0
    ids = [r.id for r in all_refs(target, "alice")]
    # merged references come after the target's own, in their source order
    assert ids == ["img_src3", "img_src2", "img_src1", "img_target2", "img_target1"]


def test_a_resumed_copy_finishes_the_job(source, target):
    """A copy that died half way (simulated: a partial copy of the first rows) is finished by
    running it again with --merge; nothing is counted twice."""
    fill(source)
    partial = Path(source.path).with_name("partial.db")
    SqliteMetadataStore(str(partial)).migrate()
    with sqlite3.connect(partial) as conn:
        conn.execute(f"ATTACH DATABASE '{source.path}' AS src")
        conn.execute("INSERT INTO objects SELECT * FROM src.objects")
        conn.execute("INSERT INTO refs SELECT * FROM src.refs WHERE seq <= 10")
    copy_sqlite_to_postgres(f"sqlite:///{partial}", target)
    copy_sqlite_to_postgres(url(source), target, merge=True)
    shared = content("shared")
    assert target.get_object(shared.hash).ref_count == source.get_object(shared.hash).ref_count
    assert [r.id for r in all_refs(target, "alice")] == [r.id for r in all_refs(source, "alice")]
    assert copy_sqlite_to_postgres(url(source), target, merge=True).mismatched_after == 0


def test_drifted_counts_are_corrected_and_reported(source, target):
    info = content("drift")
    add(source, info, "img_1")
    raw(source, "UPDATE objects SET ref_count = 7 WHERE hash = ?", (info.hash,))
    summary = copy_sqlite_to_postgres(url(source), target)
    assert summary.ref_count_corrected == 1
    assert target.get_object(info.hash).ref_count == 1


def test_references_without_an_object_are_skipped_and_reported(source, target):
    add(source, content("fine"), "img_fine")
    raw(
        source,
        "INSERT INTO refs (id, hash, owner, private, created_at) VALUES ('img_x', ?, 'a', 0, ?)",
        (content("nothing").hash, NOW),
        no_foreign_keys=True,
    )
    summary = copy_sqlite_to_postgres(url(source), target)
    assert summary.orphan_references == 1 and summary.copied["refs"] == 1
    assert target.get_reference("img_x") is None
    assert "without an object row" in summary.line()


def test_source_from_a_newer_version_is_refused(source, target):
    raw(
        source,
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES (?, ?, ?)",
        ("image-origin", "m999_future", "2030-01-01"),
    )
    with pytest.raises(CopyError, match="m999_future"):
        copy_sqlite_to_postgres(url(source), target)


def test_not_a_store_is_refused(tmp_path, target):
    with pytest.raises(CopyError, match="no SQLite database"):
        copy_sqlite_to_postgres(f"sqlite:///{tmp_path}/absent.db", target)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(CopyError, match="not an image-origin"):
        copy_sqlite_to_postgres(f"sqlite:///{other}", target)


def test_the_source_is_never_written(source, target):
    fill(source)
    source.close()
    path = Path(source.path)
    before = path.read_bytes()
    copy_sqlite_to_postgres(url(source), target)
    assert path.read_bytes() == before


# --- the command, end to end ---------------------------------------------------------------------
def test_command_moves_a_node_to_postgresql_without_reuploading(data_dir, pg_url):
    from app import create_app
    from tests import images
    from tests.conftest import ADMIN, auth, make_settings

    old = create_app(make_settings(data_dir))
    client = old.test_client()
    docs = [
        client.post("/v1/images", data=images.jpeg(seed=i), headers=auth()).json for i in range(3)
    ]
    client.delete(f"/v1/images/{docs[1]['id']}", headers=auth())
    old.config["IMAGE_ORIGIN"].close()

    db = data_dir / "metadata.db"
    runner = CliRunner()
    args = ["copy-metadata", "--from", f"sqlite:///{db}", "--to", pg_url]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "copied 3 objects, 3 refs, 0 variants, 0 damage" in result.output
    refused = runner.invoke(main, args)
    assert refused.exit_code == 1 and "--merge" in refused.output
    merged = runner.invoke(main, [*args, "--merge"])
    assert merged.exit_code == 0, merged.output
    assert (
        "copied 0 objects, 0 refs" in merged.output and "6 rows were already there" in merged.output
    )

    new = create_app(make_settings(data_dir, database_url=pg_url))
    try:
        c = new.test_client()
        listed = c.get("/v1/images", headers=auth()).json["items"]
        assert [d["id"] for d in listed] == [docs[2]["id"], docs[0]["id"]]
        assert c.get(f"/{docs[0]['hash']}/original").data == images.jpeg(seed=0)
        assert c.get(f"/{docs[1]['hash']}/original").status_code == 410
        restored = c.post(f"/v1/images/{docs[1]['id']}/restore", headers=auth())
        assert restored.status_code == 200 and restored.json["ref_count"] == 1
        obj = c.get(f"/v1/objects/{docs[0]['hash']}", headers=auth(ADMIN)).json
        assert obj["ref_count"] == 1
    finally:
        new.config["IMAGE_ORIGIN"].close()


def test_command_needs_a_postgresql_target(tmp_path):
    result = CliRunner().invoke(
        main, ["copy-metadata", "--from", f"sqlite:///{tmp_path}/a.db", "--to", "sqlite:///x"]
    )
    assert result.exit_code == 2 and "postgresql://" in result.output
