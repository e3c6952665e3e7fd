"""The lifecycle half of the MetadataStore contract (GC, reconcile, verify, tier), run unchanged
against SQLite and PostgreSQL.

A few states cannot be reached through the contract on purpose (a ref_count that disagrees with
the references, references without an object row); ``raw`` makes them with SQL on either
backend, as a crash or an outside tool would.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.metadata import (
    DAMAGE_BLOB_MISSING,
    DAMAGE_MISSING_OBJECT,
    TIER_COLD,
    TIER_HOT,
    TIER_RESTORING,
    MetadataStore,
    NeedsBlob,
    ObjectClaimed,
)
from tests.metadata.test_contract import NOW, add, content


def raw(
    store: MetadataStore, query: str, params: tuple = (), *, no_foreign_keys: bool = False
) -> None:
    """Run SQL (``?`` placeholders) behind the store's back."""
    from app.metadata.postgres import PostgresMetadataStore
    from app.metadata.sqlite import SqliteMetadataStore

    if isinstance(store, SqliteMetadataStore):
        conn = store._conn()
        if no_foreign_keys:
            conn.execute("PRAGMA foreign_keys=OFF")
        try:
            conn.execute(query, params)
        finally:
            conn.execute("PRAGMA foreign_keys=ON")
        return
    assert isinstance(store, PostgresMetadataStore)
    with store.transaction() as c:
        if no_foreign_keys:
            c.execute("SET LOCAL session_replication_role = replica")  # skips FK triggers
        c.execute(query.replace("?", "%s"), params)


def deleted_object(store: MetadataStore, seed: str, deleted_at: float, ref_id: str | None = None):  # type: ignore[no-untyped-def]
    info = content(seed)
    ref_id = ref_id or f"img_{seed}"
    add(store, info, ref_id)
    store.delete_reference(ref_id, "alice", deleted_at)
    return info


# --- gc ----------------------------------------------------------------------------------------
def test_gc_candidates_by_deletion_time_then_hash(store):
    a = deleted_object(store, "a", NOW + 1)
    b1 = deleted_object(store, "b1", NOW + 2)
    b2 = deleted_object(store, "b2", NOW + 2)
    deleted_object(store, "late", NOW + 50)
    add(store, content("live"), "img_live")
    cutoff = NOW + 10
    ties = sorted([b1.hash, b2.hash])
    assert [c.hash for c in store.gc_candidates(cutoff, None, 10)] == [a.hash, *ties]
    assert store.count_gc_candidates(cutoff) == 3
    first = store.gc_candidates(cutoff, None, 2)
    assert [c.hash for c in first] == [a.hash, ties[0]]
    assert first[0].deleted_at == NOW + 1
    after = (first[-1].deleted_at, first[-1].hash)
    assert [c.hash for c in store.gc_candidates(cutoff, after, 2)] == [ties[1]]
    assert store.gc_candidates(NOW, None, 10) == [] and store.count_gc_candidates(NOW) == 0


def test_gc_claim_takes_one_lease_at_a_time(store):
    info = deleted_object(store, "claim", NOW + 1)
    live = content("live")
    add(store, live, "img_live")
    late = deleted_object(store, "late", NOW + 50)
    assert not store.gc_claim(live.hash, "t1", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70)
    assert not store.gc_claim(late.hash, "t1", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70)
    assert store.gc_claim(info.hash, "t1", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70)
    assert not store.gc_claim(info.hash, "t2", now=NOW + 20, cutoff=NOW + 5, lease_until=NOW + 80)
    obj = store.get_object(info.hash)
    assert (obj.gc_token, obj.gc_lease_until) == ("t1", NOW + 70)
    # The first collector died: once its lease ends another one may take over.
    assert store.gc_claim(info.hash, "t2", now=NOW + 71, cutoff=NOW + 5, lease_until=NOW + 131)
    assert store.get_object(info.hash).gc_token == "t2"


def test_gc_claim_refuses_while_a_live_reference_exists(store):
    info = content("drift")
    add(store, info, "img_1")
    raw(store, "UPDATE objects SET ref_count = 0, deleted_at = ? WHERE hash = ?", (NOW, info.hash))
    assert not store.gc_claim(info.hash, "t", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70)


def test_gc_renew_and_mark(store):
    info = deleted_object(store, "renew", NOW + 1)
    assert store.gc_claim(info.hash, "t", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70)
    kw = {"margin": 10.0}
    assert store.gc_renew(info.hash, "t", now=NOW + 20, lease_until=NOW + 80, **kw)
    assert store.get_object(info.hash).gc_lease_until == NOW + 80
    assert not store.gc_renew(info.hash, "other", now=NOW + 20, lease_until=NOW + 90, **kw)
    # Less than the margin left: the holder must stop, not extend.
    assert not store.gc_renew(info.hash, "t", now=NOW + 75, lease_until=NOW + 135, **kw)
    assert store.gc_renew(
        info.hash, "t", now=NOW + 30, lease_until=NOW + 90, mark_blob_missing=True, **kw
    )
    assert store.get_object(info.hash).blob_missing_at == NOW + 30
    assert store.gc_renew(
        info.hash, "t", now=NOW + 40, lease_until=NOW + 100, mark_blob_missing=True, **kw
    )
    assert store.get_object(info.hash).blob_missing_at == NOW + 30  # kept


def test_gc_renew_fails_once_an_upload_took_the_content_back(store):
    info = deleted_object(store, "revived", NOW + 1)
    assert store.gc_claim(info.hash, "t", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70)
    add(store, info, "img_new", blob_written=False, now=NOW + 71)  # lease over: revived
    assert not store.gc_renew(info.hash, "t", now=NOW + 72, margin=1, lease_until=NOW + 130)
    assert not store.gc_finish(info.hash, "t", now=NOW + 72)
    assert store.get_object(info.hash).ref_count == 1


def test_gc_finish_removes_rows_only_under_the_lease(store):
    info = deleted_object(store, "finish", NOW + 1, ref_id="img_a")
    other = content("other")
    add(store, other, "img_other")
    key = f"variant:{info.hash}/v1-00000000/webp/high/640"
    store.add_variant(info.hash, key, 10, "image/webp", NOW)
    store.add_variant(other.hash, f"variant:{other.hash}/v1-00000000/webp/high/640", 10, "x", NOW)
    assert not store.gc_finish(info.hash, "t", now=NOW + 10)  # never claimed
    assert store.gc_claim(info.hash, "t", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70)
    assert not store.gc_finish(info.hash, "wrong", now=NOW + 20)
    assert not store.gc_finish(info.hash, "t", now=NOW + 70)  # lease ended
    assert store.gc_claim(info.hash, "t", now=NOW + 71, cutoff=NOW + 5, lease_until=NOW + 130)
    assert store.gc_finish(info.hash, "t", now=NOW + 80)
    assert store.get_object(info.hash) is None
    assert store.get_reference("img_a") is None
    assert store.list_variants(info.hash) == []
    assert len(store.list_variants(other.hash)) == 1 and store.get_object(other.hash)
    assert not store.gc_finish(info.hash, "t", now=NOW + 81)  # nothing left


def test_adopted_orphan_is_collected_and_an_upload_rewrites_it(store):
    orphan = content("orphan", mime="image/png", size=777)
    args = {"now": NOW, "deleted_at": NOW - 100, "token": "t", "lease_until": NOW + 60}
    assert store.gc_adopt_orphan(orphan.hash, 777, **args)
    obj = store.get_object(orphan.hash)
    assert obj.ref_count == 0 and obj.blob_missing_at == NOW and obj.gc_token == "t"
    assert obj.deleted_at == NOW - 100 and obj.size == 777
    assert obj.mime_type == "application/octet-stream"
    assert not store.gc_adopt_orphan(orphan.hash, 777, **{**args, "token": "t2"})
    with pytest.raises(ObjectClaimed):
        add(store, orphan, "img_1", blob_written=True, now=NOW + 1)
    # After the lease: only an upload that wrote the blob again may revive it.
    with pytest.raises(NeedsBlob):
        add(store, orphan, "img_1", blob_written=False, now=NOW + 61)
    _, revived = add(store, orphan, "img_1", blob_written=True, now=NOW + 62)
    assert revived.ref_count == 1 and revived.blob_missing_at is None
    assert (revived.mime_type, revived.size, revived.width, revived.height) == (
        "image/png",
        777,
        40,
        30,
    )
    live = content("live")
    add(store, live, "img_live")
    assert not store.gc_adopt_orphan(live.hash, 1, **args)


def test_adopted_orphan_goes_through_the_normal_collection(store):
    orphan = content("orphan2")
    assert store.gc_adopt_orphan(
        orphan.hash, 5, now=NOW, deleted_at=NOW - 100, token="t", lease_until=NOW + 60
    )
    assert store.gc_renew(orphan.hash, "t", now=NOW + 1, margin=1, lease_until=NOW + 61)
    assert store.gc_finish(orphan.hash, "t", now=NOW + 2)
    assert store.get_object(orphan.hash) is None


def test_no_adoption_for_references_without_an_object(store):
    missing = content("refs-only")
    raw(
        store,
        "INSERT INTO refs (id, hash, owner, private, created_at) VALUES (?, ?, 'alice', 0, ?)",
        ("img_x", missing.hash, NOW),
        no_foreign_keys=True,
    )
    assert not store.gc_adopt_orphan(
        missing.hash, 5, now=NOW, deleted_at=NOW, token="t", lease_until=NOW + 60
    )


# --- blob missing marks ------------------------------------------------------------------------
def test_blob_missing_mark_blocks_revival_without_a_write(store):
    info = content("missing")
    add(store, info, "img_1")
    add(store, info, "img_2", blob_written=False)
    assert store.mark_blob_missing(info.hash, NOW + 1)
    assert not store.mark_blob_missing(info.hash, NOW + 2)  # already marked
    assert store.get_object(info.hash).blob_missing_at == NOW + 1
    with pytest.raises(NeedsBlob):
        add(store, info, "img_3", blob_written=False)
    store.delete_reference("img_1", "alice", NOW + 3)
    store.delete_reference("img_2", "alice", NOW + 3)
    assert store.restore_reference("img_1", "alice", NOW + 4) is None  # blob may be gone
    _, obj = add(store, info, "img_3", blob_written=True, now=NOW + 5)
    assert obj.blob_missing_at is None and obj.ref_count == 1


def test_clear_blob_missing_only_on_live_unclaimed_objects(store):
    info = content("clear")
    add(store, info, "img_1")
    assert not store.clear_blob_missing(info.hash, NOW)  # not marked
    store.mark_blob_missing(info.hash, NOW)
    assert store.clear_blob_missing(info.hash, NOW + 1)
    assert store.get_object(info.hash).blob_missing_at is None
    gone = deleted_object(store, "gone", NOW + 1)
    store.mark_blob_missing(gone.hash, NOW + 2)
    assert not store.clear_blob_missing(gone.hash, NOW + 3)  # ref_count 0
    claimed = deleted_object(store, "claimed", NOW + 1)
    assert store.gc_claim(claimed.hash, "t", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70)
    assert not store.mark_blob_missing(claimed.hash, NOW + 11)  # GC's business now


# --- reconcile ---------------------------------------------------------------------------------
def test_existing_hashes_and_live_reference_counts(store):
    a, b, absent = content("a"), content("b"), content("absent")
    add(store, a, "img_a1")
    add(store, a, "img_a2", blob_written=False)
    add(store, b, "img_b1")
    store.delete_reference("img_b1", "alice", NOW + 1)
    assert store.existing_hashes([]) == set()
    assert store.existing_hashes([a.hash, b.hash, absent.hash]) == {a.hash, b.hash}
    assert store.live_reference_counts([]) == {}
    assert store.live_reference_counts([a.hash, b.hash, absent.hash]) == {a.hash: 2}


def test_fix_ref_count(store):
    info = content("fix")
    add(store, info, "img_1")
    add(store, info, "img_2", blob_written=False)
    assert store.fix_ref_count(info.hash, NOW + 1) is None  # right already
    raw(store, "UPDATE objects SET ref_count = 5 WHERE hash = ?", (info.hash,))
    assert store.fix_ref_count(info.hash, NOW + 1) == (5, 2)
    assert store.get_object(info.hash).ref_count == 2
    raw(store, "UPDATE refs SET deleted_at = ? WHERE hash = ?", (NOW + 2, info.hash))
    assert store.fix_ref_count(info.hash, NOW + 3) == (2, 0)
    obj = store.get_object(info.hash)
    assert obj.ref_count == 0 and obj.deleted_at == NOW + 3
    raw(store, "UPDATE refs SET deleted_at = NULL WHERE id = 'img_1'")
    assert store.fix_ref_count(info.hash, NOW + 4) == (0, 1)
    assert store.get_object(info.hash).deleted_at is None
    assert store.fix_ref_count(content("absent").hash, NOW) is None


def test_fix_ref_count_leaves_objects_under_a_lease_alone(store):
    info = deleted_object(store, "leased", NOW + 1)
    assert store.gc_claim(info.hash, "t", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70)
    raw(store, "UPDATE objects SET ref_count = 3 WHERE hash = ?", (info.hash,))
    assert store.fix_ref_count(info.hash, NOW + 20) is None
    assert store.get_object(info.hash).ref_count == 3


def test_refs_without_object_and_stray_variant_rows(store):
    kept = content("kept")
    add(store, kept, "img_kept")
    lost = sorted([content("lost1").hash, content("lost2").hash])
    for i, digest in enumerate([lost[0], lost[0], lost[1]]):
        raw(
            store,
            "INSERT INTO refs (id, hash, owner, private, created_at) VALUES (?, ?, 'a', 0, ?)",
            (f"img_lost{i}", digest, NOW),
            no_foreign_keys=True,
        )
    assert store.refs_without_object("", 10) == [(lost[0], 2), (lost[1], 1)]
    assert store.refs_without_object("", 1) == [(lost[0], 2)]
    assert store.refs_without_object(lost[0], 10) == [(lost[1], 1)]
    store.add_variant(lost[0], f"variant:{lost[0]}/v1-00000000/webp/high", 1, "image/webp", NOW)
    store.add_variant(kept.hash, f"variant:{kept.hash}/v1-00000000/webp/high", 1, "x", NOW)
    assert store.delete_variant_rows_without_object() == 1
    assert store.list_variants(lost[0]) == [] and len(store.list_variants(kept.hash)) == 1
    assert store.delete_variant_rows_without_object() == 0


def test_damage_findings_lifecycle(store):
    h1, h2 = sorted([content("d1").hash, content("d2").hash])
    store.record_damage(h2, DAMAGE_BLOB_MISSING, NOW, "first")
    store.record_damage(h1, DAMAGE_MISSING_OBJECT, NOW, "refs without object")
    store.record_damage(h1, DAMAGE_BLOB_MISSING, NOW)
    found = store.list_damage()
    assert [(d.hash, d.kind) for d in found] == [
        (h1, DAMAGE_BLOB_MISSING),
        (h1, DAMAGE_MISSING_OBJECT),
        (h2, DAMAGE_BLOB_MISSING),
    ]
    assert found[0].detail == "" and found[1].detail == "refs without object"
    assert found[0].reviewed_at is None and found[0].resolved_at is None
    assert [(d.hash, d.kind) for d in store.list_damage(after=(h1, DAMAGE_MISSING_OBJECT))] == [
        (h2, DAMAGE_BLOB_MISSING)
    ]
    assert len(store.list_damage(limit=1)) == 1
    assert store.count_unreviewed_damage() == 3
    assert store.review_damage(h1, NOW + 1) == 2
    assert store.count_unreviewed_damage() == 1
    assert store.review_damage(None, NOW + 2) == 1
    assert store.review_damage(None, NOW + 3) == 0
    # Seen again while open: the detail changes, the finding and its review stay.
    store.record_damage(h2, DAMAGE_BLOB_MISSING, NOW + 4, "again")
    (again,) = [d for d in store.list_damage() if d.hash == h2]
    assert (again.found_at, again.detail, again.reviewed_at) == (NOW, "again", NOW + 2)
    assert store.resolve_damage(h2, DAMAGE_BLOB_MISSING, NOW + 5)
    assert not store.resolve_damage(h2, DAMAGE_BLOB_MISSING, NOW + 6)
    assert [d.hash for d in store.list_damage()] == [h1, h1]
    everything = store.list_damage(open_only=False)
    assert len(everything) == 3 and everything[-1].resolved_at == NOW + 5
    # Resolved, then found again: a new finding that needs a new review.
    store.record_damage(h2, DAMAGE_BLOB_MISSING, NOW + 7, "third time")
    (reopened,) = [d for d in store.list_damage() if d.hash == h2]
    assert (reopened.found_at, reopened.reviewed_at, reopened.resolved_at) == (NOW + 7, None, None)
    assert store.count_unreviewed_damage() == 1


# --- verify and tier ---------------------------------------------------------------------------
def test_count_and_page_objects_created_since(store):
    infos = [content(f"c{i}") for i in range(4)]
    for i, info in enumerate(infos):
        add(store, info, f"img_{i}", now=NOW + 10 * (i // 2))  # two at NOW, two at NOW + 10
    assert store.count_objects() == 4
    assert store.count_objects(NOW + 10) == 2 and store.count_objects(NOW + 11) == 0
    late = sorted(i.hash for i in infos[2:])
    page = store.objects_created_since(NOW + 10, None, 1)
    assert [o.hash for o in page] == late[:1]
    rest = store.objects_created_since(NOW + 10, (page[0].created_at, page[0].hash), 10)
    assert [o.hash for o in rest] == late[1:]
    every = store.objects_created_since(NOW, None, 10)
    assert [o.created_at for o in every] == [NOW, NOW, NOW + 10, NOW + 10]


def test_tier_candidates_are_live_intact_hot_and_idle(store):
    idle = [content(f"idle{i}") for i in range(3)]
    for i, info in enumerate(idle):
        add(store, info, f"img_idle{i}", now=NOW + i)
    fresh = content("fresh")
    add(store, fresh, "img_fresh", now=NOW + 500)
    deleted_object(store, "deleted", NOW + 2)
    broken, missing, cold = content("broken"), content("missing"), content("cold")
    for info in (broken, missing, cold):
        add(store, info, f"img_{info.hash[:6]}", now=NOW)
    store.mark_integrity_failure(broken.hash, NOW)
    store.mark_blob_missing(missing.hash, NOW)
    assert store.set_object_tier(cold.hash, TIER_COLD)
    cutoff = NOW + 100
    assert [o.hash for o in store.tier_candidates(cutoff, None, 10)] == [i.hash for i in idle]
    assert store.count_tier_candidates(cutoff) == 3
    first = store.tier_candidates(cutoff, None, 2)
    after = (first[-1].last_accessed_at, first[-1].hash)
    assert [o.hash for o in store.tier_candidates(cutoff, after, 2)] == [idle[2].hash]


def test_set_object_tier_compare_and_set(store):
    a, b = content("ta"), content("tb")
    add(store, a, "img_a")
    add(store, b, "img_b")
    assert store.set_object_tier(a.hash, TIER_COLD, expected=(TIER_HOT,))
    assert not store.set_object_tier(a.hash, TIER_COLD, expected=(TIER_HOT,))  # moved already
    assert store.get_object(a.hash).tier == TIER_COLD
    assert store.set_object_tier(a.hash, TIER_RESTORING, expected=(TIER_COLD, "archived"))
    assert store.set_object_tier(b.hash, TIER_RESTORING)
    assert not store.set_object_tier(content("absent").hash, TIER_COLD)
    restoring = sorted([a.hash, b.hash])
    assert [o.hash for o in store.objects_in_tier(TIER_RESTORING, "", 10)] == restoring
    assert [o.hash for o in store.objects_in_tier(TIER_RESTORING, restoring[0], 10)] == [
        restoring[1]
    ]
    assert store.objects_in_tier(TIER_HOT, "", 10) == []


# --- concurrency -------------------------------------------------------------------------------
def test_two_collectors_never_both_claim(store, make_store):
    infos = [deleted_object(store, f"race{i}", NOW + 1) for i in range(10)]
    stores = [store, make_store()]
    for info in infos:
        start = threading.Barrier(2)

        def claim(i: int, digest: str = info.hash, start: threading.Barrier = start) -> bool:
            start.wait()
            return stores[i].gc_claim(
                digest, f"t{i}", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70
            )

        with ThreadPoolExecutor(2) as pool:
            won = list(pool.map(claim, range(2)))
        assert sum(won) == 1


def test_claim_and_upload_never_both_win(store, make_store):
    """GC claiming on one node while another node uploads the same content: either the upload
    wins (the claim fails) or the claim wins (the upload is told to wait), never both."""
    uploader = make_store()
    for i in range(15):
        info = deleted_object(store, f"cu{i}", NOW + 1)
        start = threading.Barrier(2)

        def claim(digest: str = info.hash, start: threading.Barrier = start) -> bool:
            start.wait()
            return store.gc_claim(digest, "t", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70)

        def upload(digest_info=info, n: int = i, start=start) -> bool:  # type: ignore[no-untyped-def]
            start.wait()
            try:
                add(uploader, digest_info, f"img_up{n}", blob_written=False, now=NOW + 10)
            except ObjectClaimed:
                return False
            return True

        with ThreadPoolExecutor(2) as pool:
            claimed, uploaded = pool.submit(claim), pool.submit(upload)
            assert claimed.result() != uploaded.result()
        obj = store.get_object(info.hash)
        assert obj.ref_count == (1 if uploaded.result() else 0)
        assert (obj.gc_token is None) == uploaded.result()


# --- batches (gc and tier, one transaction per step for many objects) ---------------------------
def _variant(store: MetadataStore, digest: str, name: str = "high") -> str:
    key = f"variant:{digest}/v1-00000000/webp/{name}/640"
    store.add_variant(digest, key, 10, "image/webp", NOW)
    return key


def test_gc_claim_many_tests_each_object_on_its_own(store):
    ready = [deleted_object(store, f"ready{i}", NOW + 1) for i in range(3)]
    late = deleted_object(store, "late", NOW + 50)
    live = content("live")
    add(store, live, "img_live")
    drift = content("drift")  # ref_count 0 but a live reference: never claimable
    add(store, drift, "img_drift")
    raw(store, "UPDATE objects SET ref_count = 0, deleted_at = ? WHERE hash = ?", (NOW, drift.hash))
    taken = deleted_object(store, "taken", NOW + 1)
    assert store.gc_claim(taken.hash, "other", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70)
    absent = content("absent")
    asked = [h.hash for h in (*ready, late, live, drift, taken, absent)]
    args = {"now": NOW + 20, "cutoff": NOW + 5, "lease_until": NOW + 80}
    assert store.gc_claim_many(asked + [ready[0].hash], "t", **args) == {r.hash for r in ready}
    for info in ready:
        obj = store.get_object(info.hash)
        assert (obj.gc_token, obj.gc_lease_until) == ("t", NOW + 80)
    assert store.get_object(taken.hash).gc_token == "other"  # its lease is still live
    assert store.get_object(late.hash).gc_token is None
    assert store.gc_claim_many([], "t", **args) == set()
    # The same answers the one-object claim gives, object by object:
    assert not store.gc_claim(ready[0].hash, "u", **args)
    assert store.gc_claim_many([taken.hash], "u", **{**args, "now": NOW + 71}) == {taken.hash}


def test_gc_renew_many_loses_only_the_leases_that_ended(store):
    infos = [deleted_object(store, f"renew{i}", NOW + 1) for i in range(4)]
    hashes = [i.hash for i in infos]
    args = {"now": NOW + 10, "cutoff": NOW + 5, "lease_until": NOW + 70}
    assert store.gc_claim_many(hashes, "t", **args) == set(hashes)
    # one lease was taken over, one object revived, one row collected by someone else
    raw(store, "UPDATE objects SET gc_token = 'thief' WHERE hash = ?", (hashes[1],))
    raw(store, "UPDATE objects SET gc_lease_until = ? WHERE hash = ?", (NOW, hashes[2]))
    add(store, infos[2], "img_back", blob_written=False, now=NOW + 11)
    kw = {"margin": 10.0, "lease_until": NOW + 90}
    assert store.gc_renew_many(hashes, "t", now=NOW + 20, **kw) == {hashes[0], hashes[3]}
    assert store.get_object(hashes[0]).gc_lease_until == NOW + 90
    assert store.get_object(hashes[1]).gc_lease_until == NOW + 70  # not ours: untouched
    # Less than the margin left: the holder must stop, as with gc_renew.
    assert store.gc_renew_many(hashes, "t", now=NOW + 85, **kw) == set()
    assert store.gc_renew_many([], "t", now=NOW + 20, **kw) == set()


def test_gc_renew_many_marks_and_keeps_the_first_mark(store):
    a, b = deleted_object(store, "ma", NOW + 1), deleted_object(store, "mb", NOW + 1)
    args = {"now": NOW + 10, "cutoff": NOW + 5, "lease_until": NOW + 70}
    assert store.gc_claim_many([a.hash, b.hash], "t", **args) == {a.hash, b.hash}
    first = {"margin": 1, "lease_until": NOW + 75, "mark_blob_missing": True}
    assert store.gc_renew(a.hash, "t", now=NOW + 15, **first)
    marked = store.gc_renew_many(
        [a.hash, b.hash], "t", now=NOW + 20, margin=1, lease_until=NOW + 80, mark_blob_missing=True
    )
    assert marked == {a.hash, b.hash}
    assert store.get_object(a.hash).blob_missing_at == NOW + 15  # kept
    assert store.get_object(b.hash).blob_missing_at == NOW + 20
    assert store.get_object(b.hash).gc_lease_until == NOW + 80
    with pytest.raises(NeedsBlob):  # once the lease is over: only a rewrite may revive it
        add(store, b, "img_late", blob_written=False, now=NOW + 81)


def test_gc_finish_many_removes_only_what_is_still_ours(store):
    infos = [deleted_object(store, f"fin{i}", NOW + 1, ref_id=f"img_fin{i}") for i in range(4)]
    hashes = [i.hash for i in infos]
    keys = [_variant(store, h) for h in hashes]
    other = content("other")
    add(store, other, "img_other")
    other_key = _variant(store, other.hash)
    args = {"now": NOW + 10, "cutoff": NOW + 5, "lease_until": NOW + 70}
    assert store.gc_claim_many(hashes[:3], "t", **args) == set(hashes[:3])
    raw(store, "UPDATE objects SET gc_token = 'thief' WHERE hash = ?", (hashes[1],))
    assert store.gc_finish_many(hashes, "t", now=NOW + 20) == {hashes[0], hashes[2]}
    for gone in (0, 2):
        assert store.get_object(hashes[gone]) is None
        assert store.get_reference(f"img_fin{gone}") is None
        assert store.list_variants(hashes[gone]) == []
    for kept in (1, 3):  # lease taken over; never claimed
        assert store.get_object(hashes[kept]) is not None
        assert [v.key for v in store.list_variants(hashes[kept])] == [keys[kept]]
    assert [v.key for v in store.list_variants(other.hash)] == [other_key]
    assert store.gc_finish_many(hashes, "t", now=NOW + 21) == set()  # nothing left of ours
    assert store.gc_finish_many([], "t", now=NOW + 21) == set()


def test_gc_finish_many_refuses_an_object_with_a_live_reference(store):
    info = deleted_object(store, "refd", NOW + 1)
    assert store.gc_claim_many([info.hash], "t", now=NOW + 10, cutoff=NOW + 5, lease_until=NOW + 70)
    # A reference that appeared behind the lease's back (drift): the rows stay.
    raw(store, "UPDATE refs SET deleted_at = NULL WHERE hash = ?", (info.hash,))
    assert store.gc_finish_many([info.hash], "t", now=NOW + 20) == set()
    assert store.get_object(info.hash) is not None


def test_set_object_tier_many_is_a_compare_and_set_per_object(store):
    a, b, c = content("ta"), content("tb"), content("tc")
    for info in (a, b, c):
        add(store, info, f"img_{info.hash[:8]}")
    assert store.set_object_tier(b.hash, TIER_RESTORING)
    absent = content("absent").hash
    recorded = store.set_object_tier_many(
        [a.hash, b.hash, c.hash, absent], TIER_COLD, expected=(TIER_HOT,)
    )
    assert recorded == {a.hash, c.hash}
    assert [store.get_object(h.hash).tier for h in (a, b, c)] == [
        TIER_COLD,
        TIER_RESTORING,
        TIER_COLD,
    ]
    assert store.set_object_tier_many([b.hash], TIER_HOT) == {b.hash}  # without expected
    assert store.set_object_tier_many([], TIER_COLD, expected=(TIER_HOT,)) == set()


def test_list_variants_many_has_every_hash(store):
    infos = [content(f"lv{i}") for i in range(450)]  # more than one IN list on SQLite
    for i, info in enumerate(infos):
        add(store, info, f"img_lv{i}")
    with_variants = [infos[0].hash, infos[449].hash]
    for h in with_variants:
        _variant(store, h, "low")
        _variant(store, h, "high")
    found = store.list_variants_many([i.hash for i in infos])
    assert set(found) == {i.hash for i in infos}
    for h in with_variants:
        assert found[h] == store.list_variants(h) and len(found[h]) == 2
    assert found[infos[1].hash] == []
    assert store.list_variants_many([]) == {}


def test_bulk_block_changes_nothing_a_caller_can_see(store):
    info = deleted_object(store, "bulk", NOW + 1)
    with store.bulk():
        args = {"now": NOW + 10, "cutoff": NOW + 5, "lease_until": NOW + 70}
        assert store.gc_claim_many([info.hash], "t", **args) == {info.hash}
        with store.bulk():  # nested: fine
            assert store.gc_finish_many([info.hash], "t", now=NOW + 20) == {info.hash}
    assert store.get_object(info.hash) is None
    with pytest.raises(RuntimeError), store.bulk():
        raise RuntimeError("a job that fails inside")
    add(store, content("after"), "img_after")  # the store still works afterwards


def test_candidate_pages_are_index_ranges_even_when_timestamps_tie(store):
    """Keyset pages over (deleted_at, hash) and (last_accessed_at, hash): objects sharing a
    timestamp page correctly, in hash order (m003 put hash in both indexes)."""
    tied = sorted(deleted_object(store, f"tie{i}", NOW + 1).hash for i in range(7))
    seen, after = [], None
    while page := store.gc_candidates(NOW + 5, after, 3):
        seen += [c.hash for c in page]
        after = (page[-1].deleted_at, page[-1].hash)
    assert seen == tied
    idle = sorted(
        add(store, content(f"idle{i}"), f"img_idle{i}", now=NOW)[1].hash for i in range(7)
    )
    seen, cursor = [], None
    while page := store.tier_candidates(NOW + 5, cursor, 3):
        seen += [o.hash for o in page]
        cursor = (page[-1].last_accessed_at, page[-1].hash)
    assert seen == idle


# --- concurrency of batches ----------------------------------------------------------------------
def test_two_collectors_claiming_batches_never_share_an_object(store, make_store):
    infos = [deleted_object(store, f"brace{i}", NOW + 1) for i in range(40)]
    hashes = [i.hash for i in infos]
    stores = [store, make_store()]
    start = threading.Barrier(2)

    def claim(i: int) -> set[str]:
        start.wait()
        order = hashes if i == 0 else hashes[::-1]
        won: set[str] = set()
        for chunk in range(0, len(order), 5):
            won |= stores[i].gc_claim_many(
                order[chunk : chunk + 5],
                f"t{i}",
                now=NOW + 10,
                cutoff=NOW + 5,
                lease_until=NOW + 70,
            )
        return won

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(claim, range(2))
    assert not a & b and a | b == set(hashes)
