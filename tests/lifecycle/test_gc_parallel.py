"""GC's blob deletions on several threads (what production runs: no ``pause`` seam): the lease
rule still holds for each deletion, a stall past the lease stops the threads too, and a page
whose deletions straddle the renewal interval renews and finishes.

Real SQLite and local disk; time is a FakeClock moved from inside the local store's ``_delete``
(the call each thread makes), so the interleaving is the threads' own.
"""

from __future__ import annotations

import threading

from app.jobs.gc import lease_margin, renew_interval, run_gc
from app.jobs.reconcile import run_reconcile
from tests.lifecycle.conftest import (
    FakeClock,
    blob_path,
    content,
    delete_all,
    ingest,
    make_variant,
    variant_files,
)

LEASE = 300.0
RENEW_EVERY = renew_interval(lease_margin(LEASE))
WORKERS = 4


def garbage(services, seeds: list[int], *, variants: bool = False) -> list[tuple[bytes, str]]:
    made = []
    for seed in seeds:
        data = content(seed)
        digest = ingest(services, data).object.hash
        if variants:
            make_variant(services, digest)
        delete_all(services, digest)
        made.append((data, digest))
    return made


def clocked(services, monkeypatch, step: float, stall_at: int | None = None, started=None):
    """A FakeClock for the service and gc, moved by ``step`` after every blob deletion (and past
    the lease at deletion number ``stall_at``); the list of deleted keys, in order. ``started``:
    a list to which each deletion appends the clock's reading as it starts."""
    clock = FakeClock()
    services.service.clock = clock
    lock = threading.Lock()
    deleted: list[str] = []
    real = services.blobs._delete  # what delete and each thread of delete_many call

    def delete(key: str, pruner) -> None:  # type: ignore[no-untyped-def]
        if started is not None:
            started.append(clock())
        real(key, pruner)
        with lock:
            deleted.append(key)
            clock.advance(step)
            if stall_at is not None and len(deleted) == stall_at:
                clock.advance(LEASE + 1)  # a VM freeze in the middle of the page

    monkeypatch.setattr(services.blobs, "_delete", delete)
    return clock, deleted


def test_threads_collect_a_page_with_variants(services, data_dir, monkeypatch):
    made = garbage(services, range(30), variants=True)
    clock, deleted = clocked(services, monkeypatch, step=0.0)
    result = run_gc(
        services, grace=0, confirm=True, clock=clock, lease_seconds=LEASE, workers=WORKERS
    )
    assert (result.collected, result.errors, result.lease_lost) == (30, 0, 0)
    for _, digest in made:
        assert services.meta.get_object(digest) is None
        assert not blob_path(data_dir, digest).exists() and variant_files(data_dir, digest) == []
    # every object's variants went before its original
    position = {key: i for i, key in enumerate(deleted)}
    for _, digest in made:
        original = position[f"sha256:{digest}"]
        assert all(position[k] < original for k in position if k.startswith(f"variant:{digest}"))
    check = run_reconcile(services, grace=0, confirm=True)
    assert check.ok and check.orphans_found == 0 and check.missing_blobs == 0


def test_deletions_past_the_renewal_interval_renew_first(services, data_dir, monkeypatch):
    made = garbage(services, range(40, 64))
    step = RENEW_EVERY / 5  # the page takes several renewal intervals to delete
    started: list[float] = []
    clock, deleted = clocked(services, monkeypatch, step=step, started=started)
    renewals: list[float] = []
    real_renew = services.meta.gc_renew_many

    def renew(hashes, token, **kw):  # type: ignore[no-untyped-def]
        renewals.append(kw["now"])
        return real_renew(hashes, token, **kw)

    monkeypatch.setattr(services.meta, "gc_renew_many", renew)
    result = run_gc(
        services, grace=0, confirm=True, clock=clock, lease_seconds=LEASE, workers=WORKERS
    )
    assert (result.collected, result.lease_lost, result.errors) == (len(made), 0, 0)
    # besides the marking renewal, the threads' checks asked for renewals along the way
    assert len(renewals) >= 3
    # Each deletion started within the renewal interval of the last renewal: checked by its
    # thread just before, and the clock can have moved since only by deletions then in flight.
    for at in started:
        last = max(r for r in renewals if r <= at)
        assert at - last < RENEW_EVERY + (WORKERS - 1) * step
    for _, digest in made:
        assert not blob_path(data_dir, digest).exists()


def test_a_stall_past_the_lease_stops_every_thread(services, data_dir, monkeypatch):
    made = garbage(services, range(70, 100))
    stall_at = 5
    clock, deleted = clocked(services, monkeypatch, step=0.0, stall_at=stall_at)
    result = run_gc(
        services, grace=0, confirm=True, clock=clock, lease_seconds=LEASE, workers=WORKERS
    )
    # Only deletions already past their check when the clock jumped may finish: one per
    # other thread at most. Everything else stays, with its lease lost.
    assert stall_at <= len(deleted) <= stall_at + WORKERS - 1
    assert result.collected == 0 and result.lease_lost == len(made)
    gone = {key.removeprefix("sha256:") for key in deleted}
    for data, digest in made:
        obj = services.meta.get_object(digest)
        assert obj is not None and obj.blob_missing_at is not None  # marked before any went
        if digest not in gone:
            assert blob_path(data_dir, digest).read_bytes() == data
    # the next run (a fresh lease) finishes the job
    again = run_gc(services, grace=0, confirm=True, clock=clock, lease_seconds=LEASE)
    assert again.collected == len(made)
    for _, digest in made:
        assert services.meta.get_object(digest) is None
        assert not blob_path(data_dir, digest).exists()
