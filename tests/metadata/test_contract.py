"""The MetadataStore contract: one suite, run unchanged against SQLite and PostgreSQL.

Every test takes the ``store`` fixture (tests/metadata/conftest.py), parametrized over both
backends; tests that act as several nodes open more stores on the same database with
``make_store``. Lifecycle methods (GC, reconcile, verify, tier) are in test_lifecycle_contract.py.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.metadata import ContentInfo, MetadataStore, NeedsBlob, ObjectClaimed
from app.metadata.sql import InvalidCursor, encode_seq_cursor, encode_text_cursor

NOW = 1_700_000_000.123456


def content(seed: str | int, *, mime: str = "image/jpeg", size: int = 1234) -> ContentInfo:
    digest = hashlib.sha256(str(seed).encode()).hexdigest()
    return ContentInfo(digest, mime, size, 40, 30)


def add(
    store: MetadataStore,
    info: ContentInfo,
    ref_id: str,
    *,
    owner: str = "alice",
    private: bool = False,
    now: float = NOW,
    blob_written: bool = True,
    filename: str | None = "cat.jpg",
):  # type: ignore[no-untyped-def]
    return store.add_reference(
        info,
        ref_id=ref_id,
        owner=owner,
        original_filename=filename,
        private=private,
        now=now,
        blob_written=blob_written,
    )


# --- the protocol itself ----------------------------------------------------------------------
def _shape(fn) -> list[tuple[str, object, object]]:  # type: ignore[no-untyped-def]
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_every_backend_implements_every_protocol_method():
    from app.metadata.base import MetadataStore as Protocol
    from app.metadata.postgres import PostgresMetadataStore
    from app.metadata.sqlite import SqliteMetadataStore

    methods = [n for n, v in vars(Protocol).items() if callable(v) and not n.startswith("_")]
    assert len(methods) > 20
    for backend in (SqliteMetadataStore, PostgresMetadataStore):
        for name in methods:
            impl = getattr(backend, name, None)
            assert callable(impl), f"{backend.__name__} lacks {name}"
            assert _shape(impl) == _shape(getattr(Protocol, name)), f"{backend.__name__}.{name}"


# --- migrations and health ---------------------------------------------------------------------
def test_migrate_is_recorded_and_idempotent(backend, make_store):
    from app.metadata.postgres_migrations import names
    from tests.metadata.conftest import open_store

    fresh = open_store(*backend)
    try:
        applied = fresh.migrate()
        # Both backends have the same history, under the same names, in the same order.
        assert applied == names()
        assert fresh.migrate() == []
        fresh.ping()
    finally:
        fresh.close()
    assert make_store().migrate() == []  # another node starting later applies nothing


# --- add_reference -----------------------------------------------------------------------------
def test_add_reference_inserts_object_and_reference(store):
    info = content("a", mime="image/png", size=98765)
    ref, obj = add(store, info, "img_1", filename="a.png", private=False)
    assert (ref.id, ref.hash, ref.owner, ref.original_filename) == (
        "img_1",
        info.hash,
        "alice",
        "a.png",
    )
    assert ref.private is False and ref.deleted_at is None and ref.created_at == NOW
    assert ref.seq > 0
    assert obj.hash == info.hash and obj.storage_key == f"sha256:{info.hash}"
    assert (obj.mime_type, obj.size, obj.width, obj.height) == ("image/png", 98765, 40, 30)
    assert obj.ref_count == 1 and obj.deleted_at is None and obj.tier == "hot"
    assert obj.created_at == NOW and obj.last_accessed_at == NOW
    assert obj.integrity_failed_at is None and obj.blob_missing_at is None
    assert obj.gc_token is None and obj.has_public_ref and not obj.private
    assert store.get_object(info.hash) == obj
    assert store.get_reference("img_1") == ref


def test_missing_row_needs_the_blob_first(store):
    info = content("b")
    with pytest.raises(NeedsBlob):
        add(store, info, "img_1", blob_written=False)
    assert store.get_object(info.hash) is None
    assert store.get_reference("img_1") is None


def test_dedup_counts_references_to_one_object(store):
    info = content("c")
    add(store, info, "img_1")
    _, obj = add(store, info, "img_2", owner="bob", blob_written=False, now=NOW + 5)
    assert obj.ref_count == 2 and obj.created_at == NOW
    _, obj = add(store, info, "img_3", blob_written=True, now=NOW + 6)  # a rewrite is harmless
    assert obj.ref_count == 3
    assert [r.id for r in store.live_references(info.hash)] == ["img_1", "img_2", "img_3"]
    assert store.list_objects(10, None).items == [obj]


def test_duplicate_reference_id_fails_and_changes_nothing(store):
    info = content("dup")
    add(store, info, "img_1")
    with pytest.raises(Exception):  # noqa: B017 - SQLite raises IntegrityError, PG MetadataError
        add(store, info, "img_1")
    assert store.get_object(info.hash).ref_count == 1


def test_revive_after_every_reference_was_deleted(store):
    info = content("d")
    add(store, info, "img_1")
    store.delete_reference("img_1", "alice", NOW + 1)
    gone = store.get_object(info.hash)
    assert gone.ref_count == 0 and gone.deleted_at == NOW + 1
    _, obj = add(store, info, "img_2", blob_written=False, now=NOW + 2)
    assert obj.ref_count == 1 and obj.deleted_at is None


def test_gc_lease_blocks_add_and_restore_until_it_ends(store):
    info = content("claimed")
    add(store, info, "img_1")
    store.delete_reference("img_1", "alice", NOW + 1)
    assert store.gc_claim(info.hash, "tok", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70)
    held = store.get_object(info.hash)
    assert held.gc_token == "tok" and held.claimed_at(NOW + 20)
    with pytest.raises(ObjectClaimed):
        add(store, info, "img_2", blob_written=False, now=NOW + 20)
    with pytest.raises(ObjectClaimed):
        add(store, info, "img_2", blob_written=True, now=NOW + 20)
    assert store.restore_reference("img_1", "alice", NOW + 20) is None
    assert store.get_reference("img_2") is None and store.get_object(info.hash).ref_count == 0
    # After the lease ends (the collector died), an upload takes the content back.
    _, obj = add(store, info, "img_2", blob_written=False, now=NOW + 71)
    assert obj.ref_count == 1 and obj.gc_token is None and obj.gc_lease_until is None


# --- references: get, list, delete, restore ----------------------------------------------------
def test_ref_count_through_delete_repeat_and_restore(store):
    info = content("e")
    add(store, info, "img_1")
    add(store, info, "img_2", blob_written=False)
    assert store.delete_reference("img_1", "bob", NOW + 1) is None  # not the owner
    deleted = store.delete_reference("img_1", "alice", NOW + 1)
    assert deleted is not None and deleted.deleted_at == NOW + 1
    assert store.get_object(info.hash).ref_count == 1
    assert store.get_object(info.hash).deleted_at is None
    assert store.delete_reference("img_1", "alice", NOW + 2) is None  # repeat: nothing
    assert store.get_object(info.hash).ref_count == 1
    store.delete_reference("img_2", "alice", NOW + 3)
    obj = store.get_object(info.hash)
    assert obj.ref_count == 0 and obj.deleted_at == NOW + 3
    assert store.restore_reference("img_1", "bob", NOW + 4) is None  # not the owner
    restored = store.restore_reference("img_1", "alice", NOW + 4)
    assert restored is not None and restored.deleted_at is None
    obj = store.get_object(info.hash)
    assert obj.ref_count == 1 and obj.deleted_at is None
    assert store.restore_reference("img_1", "alice", NOW + 5) is None  # not deleted now
    assert store.get_object(info.hash).ref_count == 1
    assert store.restore_reference("img_nope", "alice", NOW) is None
    assert store.delete_reference("img_nope", "alice", NOW) is None


def test_list_references_newest_first_with_cursors(store):
    ids = [f"img_{i:02d}" for i in range(25)]
    for i, ref_id in enumerate(ids):
        add(store, content(i), ref_id, now=NOW + i)
    add(store, content("other"), "img_bob", owner="bob")
    store.delete_reference("img_03", "alice", NOW + 100)
    expected = [i for i in reversed(ids) if i != "img_03"]
    seen, cursor, pages = [], None, 0
    while True:
        page = store.list_references("alice", 10, cursor)
        seen += [r.id for r in page.items]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected and pages == 3
    assert [r.id for r in store.list_references("bob", 10, None).items] == ["img_bob"]
    assert store.list_references("carol", 10, None).items == []
    exact = store.list_references("bob", 1, None)
    assert exact.next_cursor is None  # a page that ends exactly at the end says so


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        "eDE",
        "czEyYQ",
        "a" * 300,
        encode_text_cursor("abc"),
        "czk5OTk5OTk5OTk5OTk5OTk5OTk5OQ",
    ],
)
def test_bad_reference_cursors_are_invalid(store, cursor):
    with pytest.raises(InvalidCursor):
        store.list_references("alice", 10, cursor)


def test_huge_but_wellformed_seq_cursor_is_not_an_error(store):
    add(store, content("x"), "img_1")
    page = store.list_references("alice", 10, encode_seq_cursor(10**19 - 1))
    assert [r.id for r in page.items] == ["img_1"]


def test_live_references_in_upload_order(store):
    info = content("f")
    for i in range(4):
        add(store, info, f"img_{i}", owner="alice" if i % 2 else "bob", blob_written=i == 0)
    store.delete_reference("img_2", "bob", NOW + 1)
    assert [r.id for r in store.live_references(info.hash)] == ["img_0", "img_1", "img_3"]
    assert store.live_references(content("none").hash) == []


def test_hostile_keys_find_nothing(store):
    info = content("g")
    add(store, info, "img_1")
    for bad in ("img_\x00", "\x00", "img_1\x00", "' OR 1=1 --", "img_%", "ü" * 100):
        assert store.get_reference(bad) is None
        assert store.delete_reference(bad, "alice", NOW) is None
        assert store.restore_reference(bad, "alice", NOW) is None
        assert store.get_object(bad) is None
        assert store.live_references(bad) == []
        assert store.list_variants(bad) == []
    everything = store.list_objects(10, None).items
    assert store.list_objects(10, encode_text_cursor("\x00")).items == everything
    assert store.list_objects(10, encode_text_cursor(info.hash[:3] + "\x00z")).items == [
        o for o in everything if o.hash > info.hash[:3]
    ]
    assert store.list_references("alice\x00", 10, None).items == []
    assert store.get_object(info.hash).ref_count == 1


# --- privacy -----------------------------------------------------------------------------------
def test_content_is_private_only_when_every_live_reference_is(store):
    info = content("h")
    _, obj = add(store, info, "img_priv", private=True)
    assert obj.private and not obj.has_public_ref
    _, obj = add(store, info, "img_pub", private=False, blob_written=False)
    assert not obj.private
    store.delete_reference("img_pub", "alice", NOW + 1)
    assert store.get_object(info.hash).private
    store.restore_reference("img_pub", "alice", NOW + 2)
    assert not store.get_object(info.hash).private
    store.delete_reference("img_pub", "alice", NOW + 3)
    store.delete_reference("img_priv", "alice", NOW + 3)
    assert store.get_object(info.hash).private  # no live reference at all: nothing public


# --- objects -----------------------------------------------------------------------------------
def test_list_and_iter_objects_by_hash(store):
    infos = [content(f"obj{i}") for i in range(7)]
    for i, info in enumerate(infos):
        add(store, info, f"img_{i}")
    hashes = sorted(i.hash for i in infos)
    page1 = store.list_objects(3, None)
    page2 = store.list_objects(3, page1.next_cursor)
    page3 = store.list_objects(3, page2.next_cursor)
    assert [o.hash for o in page1.items + page2.items + page3.items] == hashes
    assert page3.next_cursor is None
    assert [o.hash for o in store.iter_objects(batch=2)] == hashes
    with pytest.raises(InvalidCursor):
        store.list_objects(3, "!!")
    assert store.list_objects(3, encode_text_cursor("f" * 64)).items == []


def test_record_access_is_throttled(store):
    info = content("i")
    add(store, info, "img_1", now=NOW)
    assert store.record_access(info.hash, NOW + 10, 3600) is False  # uploaded just now
    assert store.record_access(info.hash, NOW + 3600, 3600) is True
    assert store.get_object(info.hash).last_accessed_at == NOW + 3600
    assert store.record_access(info.hash, NOW + 3700, 3600) is False
    assert store.record_access(info.hash, NOW + 7200, 3600) is True
    assert store.record_access(content("nope").hash, NOW, 0) is False


def test_record_access_concurrently_writes_once(store, make_store):
    info = content("i2")
    add(store, info, "img_1", now=NOW)
    stores = [make_store() for _ in range(4)]
    with ThreadPoolExecutor(16) as pool:
        wrote = list(
            pool.map(lambda i: stores[i % 4].record_access(info.hash, NOW + 5000, 3600), range(16))
        )
    assert sum(wrote) == 1


def test_integrity_failure_is_marked_once(store):
    info = content("j")
    add(store, info, "img_1")
    store.mark_integrity_failure(info.hash, NOW + 1)
    store.mark_integrity_failure(info.hash, NOW + 2)  # the first finding stays
    assert store.get_object(info.hash).integrity_failed_at == NOW + 1
    store.mark_integrity_failure(content("absent").hash, NOW)  # nothing to mark: no error


# --- variants ----------------------------------------------------------------------------------
def test_variants_are_upserted_and_listed_by_key(store):
    info = content("k")
    add(store, info, "img_1")
    key_b = f"variant:{info.hash}/v1-00000000/webp/high/640"
    key_a = f"variant:{info.hash}/v1-00000000/avif/high/640"
    store.add_variant(info.hash, key_b, 100, "image/webp", NOW)
    store.add_variant(info.hash, key_a, 200, "image/avif", NOW + 1)
    store.add_variant(info.hash, key_b, 150, "image/webp", NOW + 2)  # remade: one row, new size
    variants = store.list_variants(info.hash)
    assert [(v.key, v.size, v.content_type) for v in variants] == [
        (key_a, 200, "image/avif"),
        (key_b, 150, "image/webp"),
    ]
    assert variants[0].hash == info.hash and variants[0].created_at == NOW + 1
    assert store.list_variants(content("none").hash) == []


# --- concurrency: several nodes (stores) on one database ---------------------------------------
def test_twenty_concurrent_adds_of_one_new_content(store, make_store):
    info = content("concurrent")
    stores = [store] + [make_store() for _ in range(3)]
    start = threading.Barrier(20)

    def upload(i: int):  # type: ignore[no-untyped-def]
        # The service's protocol: look, write the blob if absent, add; NeedsBlob -> again.
        s = stores[i % len(stores)]
        start.wait()
        for _ in range(50):
            must_write = s.get_object(info.hash) is None
            try:
                return add(s, info, f"img_{i:02d}", blob_written=must_write)
            except NeedsBlob:
                continue
        raise AssertionError("never added")

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(upload, range(20)))
    assert len({ref.id for ref, _ in results}) == 20
    assert sorted(obj.ref_count for _, obj in results) == list(range(1, 21))
    obj = store.get_object(info.hash)
    assert obj.ref_count == 20
    assert [o.hash for o in store.iter_objects()] == [info.hash]
    assert len(store.live_references(info.hash)) == 20


def test_concurrent_deletes_and_restores_of_one_reference(store, make_store):
    info = content("race")
    add(store, info, "img_1")
    add(store, info, "img_2", blob_written=False)
    stores = [store] + [make_store() for _ in range(3)]
    with ThreadPoolExecutor(12) as pool:
        deleted = list(
            pool.map(lambda i: stores[i % 4].delete_reference("img_1", "alice", NOW + 1), range(12))
        )
    assert sum(d is not None for d in deleted) == 1
    assert store.get_object(info.hash).ref_count == 1
    with ThreadPoolExecutor(12) as pool:
        restored = list(
            pool.map(
                lambda i: stores[i % 4].restore_reference("img_1", "alice", NOW + 2), range(12)
            )
        )
    assert sum(r is not None for r in restored) == 1
    assert store.get_object(info.hash).ref_count == 2


def test_concurrent_deletes_and_adds_keep_the_count_exact(store, make_store):
    info = content("mixed")
    for i in range(10):
        add(store, info, f"old_{i}", blob_written=i == 0)
    stores = [store] + [make_store() for _ in range(3)]

    def work(i: int) -> None:
        s = stores[i % 4]
        if i % 2:
            assert s.delete_reference(f"old_{i // 2}", "alice", NOW + 1) is not None
        else:
            add(s, info, f"new_{i}", blob_written=False, now=NOW + 1)

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(work, range(20)))
    obj = store.get_object(info.hash)
    assert obj.ref_count == 10 == len(store.live_references(info.hash))
