"""GC a batch at a time: each object keeps its own lease inside a batch, a stalled worker deletes
nothing more whichever object it stalled on, and a crash between any two steps of a batch leaves
nothing an upload or a later run could trip over.

Real SQLite (and PostgreSQL, tests/multinode/test_lifecycle_on_postgres.py) and local disk
(the app's own services); the steps are interleaved through the collector's ``pause`` seam, as
in test_gc_races.py.
"""

from __future__ import annotations

import pytest

from app.jobs.gc import run_gc
from app.jobs.reconcile import run_reconcile
from app.storage import keys
from tests.lifecycle.conftest import (
    FakeClock,
    blob_path,
    content,
    db,
    delete_all,
    ingest,
    make_variant,
    sha,
    variant_files,
)

LEASE = 300.0


class Crash(BaseException):
    """The process dies here (nothing catches it on the way out)."""


def garbage_batch(services, seeds: list[int]) -> list[tuple[bytes, str]]:
    """Deleted content with one stored variant each, in the order gc will see it."""
    made = []
    for seed in seeds:
        data = content(seed)
        digest = ingest(services, data).object.hash
        make_variant(services, digest)
        delete_all(services, digest)
        made.append((data, digest))
    cutoff = services.service.clock()
    order = [c.hash for c in services.meta.gc_candidates(cutoff, None, 100)]
    return sorted(made, key=lambda item: order.index(item[1]))


def assert_no_row_names_a_missing_blob(services, data_dir, digests: list[str]) -> None:
    """The invariant a crash must keep: a row whose original is gone is marked, so no upload
    can revive it without writing the bytes again."""
    for digest in digests:
        obj = services.meta.get_object(digest)
        if obj is not None and not blob_path(data_dir, digest).exists():
            assert obj.blob_missing_at is not None, digest


@pytest.fixture
def clock(services) -> FakeClock:
    fake = FakeClock()
    services.service.clock = fake
    return fake


def test_one_object_losing_its_lease_does_not_stop_the_rest_of_its_batch(services, data_dir, clock):
    (_, a), (b_data, b), (_, c) = garbage_batch(services, [1, 2, 3])

    def pause(stage: str, digest: str) -> None:
        if stage == "original" and digest == b:  # another collector took b over meanwhile
            with db(services) as conn:
                conn.execute("UPDATE objects SET gc_token = 'thief' WHERE hash = ?", (b,))

    result = run_gc(services, grace=0, confirm=True, clock=clock, pause=pause, lease_seconds=LEASE)
    assert (result.collected, result.lease_lost, result.errors) == (2, 1, 0)
    for digest in (a, c):
        assert services.meta.get_object(digest) is None
        assert not blob_path(data_dir, digest).exists() and variant_files(data_dir, digest) == []
    assert blob_path(data_dir, b).read_bytes() == b_data  # not ours any more: kept
    assert services.meta.get_object(b).blob_missing_at is None  # and never marked by us
    clock.advance(LEASE + 1)  # the thief's lease ends; a later run collects b
    again = run_gc(services, grace=0, confirm=True, clock=clock, lease_seconds=LEASE)
    assert again.collected == 1 and not blob_path(data_dir, b).exists()


def test_a_stall_past_the_lease_stops_every_deletion_left_in_the_batch(services, data_dir, clock):
    made = garbage_batch(services, [4, 5, 6])
    digests = [d for _, d in made]
    variants = {d: variant_files(data_dir, d) for d in digests}

    def pause(stage: str, digest: str) -> None:
        if stage == "variant" and digest == digests[1]:
            clock.advance(LEASE + 1)  # a VM freeze while working on the second object

    result = run_gc(services, grace=0, confirm=True, clock=clock, pause=pause, lease_seconds=LEASE)
    assert (result.collected, result.lease_lost) == (0, 3)
    assert variant_files(data_dir, digests[0]) == []  # deleted before the stall, under a lease
    for data, digest in made:
        assert blob_path(data_dir, digest).read_bytes() == data
        assert services.meta.get_object(digest).blob_missing_at is None
    for digest in digests[1:]:
        assert variant_files(data_dir, digest) == variants[digest]
    again = run_gc(services, grace=0, confirm=True, clock=clock, lease_seconds=LEASE)
    assert again.collected == 3


def test_pages_of_a_few_objects(services, data_dir):
    made = garbage_batch(services, [7, 8, 9, 10, 11])
    result = run_gc(services, grace=0, confirm=True, batch=2)
    assert (result.candidates, result.collected) == (5, 5)
    for _, digest in made:
        assert services.meta.get_object(digest) is None
        assert not blob_path(data_dir, digest).exists()


STAGES = ["claimed", "variant", "original", "window", "rows"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_crash_between_batch_steps_leaves_rows_and_blobs_consistent(
    services, data_dir, clock, stage
):
    made = garbage_batch(services, [20, 21, 22])
    digests = [d for _, d in made]

    def pause(s: str, digest: str) -> None:
        if s == stage and digest == digests[1]:
            raise Crash(f"killed at {s}")

    with pytest.raises(Crash):
        run_gc(services, grace=0, confirm=True, clock=clock, pause=pause, lease_seconds=LEASE)
    assert_no_row_names_a_missing_blob(services, data_dir, digests)
    clock.advance(LEASE + 1)  # the dead collector's leases run out; the next run finishes
    result = run_gc(services, grace=0, confirm=True, clock=clock, lease_seconds=LEASE)
    assert result.ok and result.collected == 3
    for digest in digests:
        assert services.meta.get_object(digest) is None
        assert not blob_path(data_dir, digest).exists() and variant_files(data_dir, digest) == []
    check = run_reconcile(services, grace=0, confirm=True)
    assert check.ok and check.missing_blobs == 0 and check.orphans_found == 0


@pytest.mark.parametrize("stage", STAGES)
def test_uploads_after_a_crashed_batch_always_end_with_their_bytes(
    services, data_dir, clock, stage
):
    made = garbage_batch(services, [30, 31, 32])
    digests = [d for _, d in made]

    def pause(s: str, digest: str) -> None:
        if s == stage and digest == digests[1]:
            raise Crash(f"killed at {s}")

    with pytest.raises(Crash):
        run_gc(services, grace=0, confirm=True, clock=clock, pause=pause, lease_seconds=LEASE)
    clock.advance(LEASE + 1)
    for data, digest in made:
        uploaded = ingest(services, data)
        assert uploaded.object.hash == digest and uploaded.object.ref_count == 1
        assert blob_path(data_dir, digest).read_bytes() == data
        obj = services.meta.get_object(digest)
        assert obj.blob_missing_at is None
        assert services.service.read_original(obj).read() == data
    assert run_gc(services, grace=0, confirm=True, clock=clock).collected == 0  # all live


def test_reconciles_orphans_still_go_one_at_a_time_through_the_same_collector(services, data_dir):
    data = content(40)
    digest = sha(data)
    path = blob_path(data_dir, digest)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    result = run_reconcile(services, grace=0, confirm=True)
    assert result.orphans_removed == 1 and not path.exists()
    assert services.meta.get_object(digest) is None
    assert not services.blobs.exists(keys.original_key(digest))
