"""Garbage collection: remove content nobody references once its grace period is over.

The protocol, per object (the README's "Operations" section has the reasoning and the residual
window):

1. select: ref_count = 0 and deleted_at older than the grace (keyset batches on idx_objects_gc);
2. claim: one UPDATE re-checks ref_count = 0, the grace, that no live reference exists and that
   no other live lease is held, and sets gc_token / gc_lease_until. While the lease is live an
   upload of the same content waits (add_reference raises ObjectClaimed) and restore refuses;
3. before each deletion the lease is renewed, which fails unless this token still holds it with
   more than ``margin`` seconds left: a worker paused past its lease deletes nothing more;
   cache entries go first, then stored variants;
4. the renewal just before the original's delete also sets blob_missing_at: from then on no
   upload may revive the row without writing the blob again (add_reference raises NeedsBlob);
5. the original blob is deleted;
6. one transaction deletes the rows, only if the lease is still ours and live, ref_count is
   still 0 and no live reference exists. If that fails because an upload revived the row, the
   blob is checked and, if it is gone, the loss is recorded as damage (GC then refuses to run).

Batches. The steps run for a page of candidates at a time, each metadata step one transaction
for the whole page (``gc_claim_many``, ``gc_renew_many``, ``gc_finish_many``): one commit per
object and step was most of a run's time. Each object keeps its own lease and its own checks: an
object whose claim or renewal fails drops out of the batch, alone. What changes is only when a
renewal happens: not immediately before each deletion but at most ``renew_every`` (a tenth of
the margin) before it, by the collector's clock; a stall longer than that renews first, and a
lease lost meanwhile stops that object's deletions as before. So every deletion still starts
with at least the lease minus ``renew_every`` in hand, far more than the margin step 3 asks for.
The steps of one object keep their order: variants, then the marking renewal, then the original
(the marks of the whole page are committed before its first original is deleted), then rows.

Blob deletions of a page go to the store together (``delete_blobs``: on local disk a few
threads, because each removal waits on the device, see ``app.storage.local``). The lease rule
is checked by the thread making each deletion, immediately before it starts: a deletion starts
only while the last renewal is younger than ``renew_every``; one that would start later is not
made, and the collector renews (dropping the objects whose lease is lost) before it goes on.
So the guarantee above holds for each deletion exactly as when they went one at a time. With
a ``pause`` seam (tests) the deletions run one at a time in the collector's thread, so that the
seam interleaves other actors deterministically; the checks are the same code. One thing
differs with threads: when a stored variant's deletion fails, other variants of that object
may still be deleted by the threads already on them (its original is not: the object fails).

Durability. Nothing here needs a deletion to be durable before the next step: a deletion lost to
a crash only brings a blob back (an orphan, which reconcile removes; or the blob of a row marked
blob_missing_at, which the next run collects). What must not be lost is the mark once the blob's
deletion is on disk, or an unmarked row would name a missing blob that an upload could revive
without writing it: the marking renewal's commit is durable (on SQLite, whose other commits are
not under synchronous=NORMAL, it syncs the WAL; once per page), and it happens before any of the
page's originals is deleted. Row deletions need no sync: lost, they leave marked rows for the
next run.

Reconcile uses the same collector for orphan blobs: it adopts them with a placeholder row that
it claims at once (``MetadataStore.gc_adopt_orphan``), so uploads racing it behave as above.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from app import metrics
from app.jobs.common import (
    BULK_BATCH,
    Clock,
    NoProgress,
    Pause,
    Progress,
    Report,
    cache_key_suffixes,
    cache_keys_for,
    check_grace,
    deferred_pruning,
    delete_blobs,
    log_report,
    no_pause,
    no_report,
    stored_variant_keys,
)
from app.logs import event, logger
from app.metadata import DAMAGE_BLOB_MISSING, MetadataError
from app.storage import StorageError, keys

COLLECTED = "collected"
SKIPPED = "skipped"  # the claim failed: revived, inside the grace again, or another worker's
LEASE_LOST = "lease_lost"  # stopped before deleting more: the lease ran out or was taken
RACE_LOST = "race_lost"  # the blob was deleted after the lease ran out and the row was revived
ERROR = "error"  # storage or database failure; the lease expires and a later run retries


class GcRefused(RuntimeError):
    """Reconcile found damage nobody has reviewed: collecting now could destroy evidence or
    the last copy of something (restic refuses to prune for the same reason)."""


def lease_margin(lease_seconds: float) -> float:
    """Renewals fail when less than this is left, so a deletion that follows a successful
    renewal starts with at least this much lease in hand."""
    return max(1.0, lease_seconds / 4)


def renew_interval(margin: float) -> float:
    """How long after a renewal a batch may go on deleting before renewing again."""
    return margin / 10


#: Keys per cache delete call: one Redis DEL for many objects, but never an unbounded one.
CACHE_DELETE_CHUNK = 2000


class Collector:
    """Deletes claimed objects, a batch at a time: cache entries, stored variants, the
    originals, the rows (the module docstring has the protocol and why it is safe)."""

    def __init__(
        self,
        services: Any,
        *,
        clock: Clock = time.time,
        pause: Pause = no_pause,
        lease_seconds: float | None = None,
        workers: int | None = None,
    ) -> None:
        self.services = services
        self.meta = services.meta
        self.blobs = services.blobs
        self.cache = services.cache
        self.clock = clock
        self.pause = pause
        #: Threads for a batch's blob deletions (None: the store's choice); with a seam, one:
        #: the deletions then run in this thread, in order, so the seam is deterministic.
        self.workers = 1 if workers is None and pause is not no_pause else workers
        self.lease = float(lease_seconds or services.settings.gc_lease_seconds)
        self.margin = lease_margin(self.lease)
        self.renew_every = renew_interval(self.margin)
        self._suffixes: list[str] | None = None

    @staticmethod
    def new_token() -> str:
        return secrets.token_hex(16)

    def lease_until(self) -> float:
        return self.clock() + self.lease

    def claim_many(self, digests: list[str], token: str, grace: float) -> tuple[set[str], float]:
        """Step 2 for a batch: the digests ``token`` now holds, and when their leases began."""
        now = self.clock()
        held = self.meta.gc_claim_many(
            digests, token, now=now, cutoff=now - grace, lease_until=now + self.lease
        )
        return held, now

    def collect(self, digest: str, token: str) -> str:
        """Collect one object ``token`` holds (reconcile's adopted orphans)."""
        return self.collect_many([digest], token)[digest]

    def collect_many(
        self, digests: list[str], token: str, *, leased_at: float | None = None
    ) -> dict[str, str]:
        """Collect objects ``token`` holds; the outcome of each. ``leased_at``: when the claim
        (or last renewal) of all of them committed, if the caller knows; a claim that recent
        counts as the renewal before the first deletion."""
        batch = _Batch(self, token, digests, leased_at)
        try:
            batch.run()
        except MetadataError as exc:  # a batch step failed: whatever was still held, fails
            for digest in list(batch.held):
                batch.fail(digest, exc)
        return batch.outcomes

    def cache_keys(self, digest: str, variants: list[str]) -> list[str]:
        if self._suffixes is None:
            self._suffixes = cache_key_suffixes(self.services.settings)
        return cache_keys_for(digest, self.services.settings, variants, self._suffixes)

    def delete_cached(self, keys_: list[str]) -> None:
        for start in range(0, len(keys_), CACHE_DELETE_CHUNK):
            self.cache.delete(*keys_[start : start + CACHE_DELETE_CHUNK])

    def _finish_refused(self, digest: str, original: str) -> str:
        """Our lease ended after the blob was deleted. Harmless unless an upload revived the
        row meanwhile without rewriting the blob (only possible if this worker stalled longer
        than the margin between its last renewal and the delete): then record the loss."""
        obj = self.meta.get_object(digest)
        if obj is None or obj.ref_count <= 0 or self.blobs.exists(original):
            return LEASE_LOST
        now = self.clock()
        self.meta.mark_blob_missing(digest, now)
        self.meta.record_damage(
            digest, DAMAGE_BLOB_MISSING, now, "gc deleted the blob after its lease ran out"
        )
        event("gc_race_lost", level=logging.ERROR, hash=digest)
        return RACE_LOST


class _Batch:
    """One batch of claimed objects going through steps 3 to 6 together.

    ``held`` is what this token still holds, in order; an object leaves it with its outcome.
    ``pause`` is called per object at each stage, in the same order relative to that object's
    renewals and deletions as when objects went one at a time.
    """

    def __init__(
        self, collector: Collector, token: str, digests: list[str], leased_at: float | None
    ) -> None:
        self.c = collector
        self.token = token
        self.held: dict[str, None] = dict.fromkeys(digests)
        self.outcomes: dict[str, str] = {}
        self.renewed_at = leased_at
        self.variants: dict[str, list[str]] = {}
        self.cached: dict[str, list[str]] = {}
        self.paused: set[str] = set()  # variant keys whose "variant" seam has been called

    def done(self, digest: str, outcome: str) -> None:
        self.held.pop(digest, None)
        self.outcomes[digest] = outcome

    def fail(self, digest: str, exc: Exception) -> None:
        event("gc_object_failed", level=logging.WARNING, hash=digest, error=str(exc))
        self.done(digest, ERROR)

    def renew(self, *, mark_blob_missing: bool = False) -> None:
        """Renew every lease still held; the ones that cannot be renewed are lost."""
        if not self.held:
            return
        now = self.c.clock()
        renewed = self.c.meta.gc_renew_many(
            list(self.held),
            self.token,
            now=now,
            margin=self.c.margin,
            lease_until=now + self.c.lease,
            mark_blob_missing=mark_blob_missing,
        )
        self.renewed_at = now
        for digest in list(self.held):
            if digest not in renewed:
                self.done(digest, LEASE_LOST)

    def keep_fresh(self) -> None:
        """Before a deletion: renew first if the last renewal (or the claim) is older than
        ``renew_every``: a stall, or a long batch."""
        if self.renewed_at is None or self.c.clock() - self.renewed_at >= self.c.renew_every:
            self.renew()

    def delete(self, work: list[tuple[str, str]], stage: str) -> None:
        """Delete the blobs of ``work`` ((digest, key) pairs, in order) of the digests still
        held, all at once (``delete_blobs``), each only while the last renewal is younger than
        ``renew_every``; when one would start later, renew and go on with what is still held.
        A digest whose deletion fails leaves the batch with ERROR. ``stage``: "variant" calls
        the seam before each check, "window" between the check and the deletion."""
        c = self.c
        owner = {key: digest for digest, key in work}

        def before(key: str) -> bool:  # in the deleting thread; renewals are between calls
            if stage == "variant" and key not in self.paused:
                self.paused.add(key)
                c.pause("variant", owner[key])
            renewed_at = self.renewed_at
            if renewed_at is None or c.clock() - renewed_at >= c.renew_every:
                return False  # not started: renew first
            if stage == "window":
                # The residual window: from the renewal's commit to the delete reaching storage.
                c.pause("window", owner[key])
            return True

        pending = list(owner)
        while pending:
            self.keep_fresh()
            pending = [key for key in pending if owner[key] in self.held]
            if not pending:
                return
            done = delete_blobs(c.blobs, pending, before=before, workers=c.workers)
            for key, exc in done.items():
                if exc is not None and owner[key] in self.held:
                    self.fail(owner[key], exc)
            pending = [key for key in pending if key not in done]

    def run(self) -> None:
        c = self.c
        if not self.held:
            return
        for digest in self.held:
            c.pause("claimed", digest)
        rows = c.meta.list_variants_many(list(self.held))
        for digest in list(self.held):
            try:
                self.variants[digest] = stored_variant_keys(c.services, digest, rows[digest])
            except StorageError as exc:
                self.fail(digest, exc)
                continue
            self.cached[digest] = c.cache_keys(digest, self.variants[digest])
        self.keep_fresh()
        c.delete_cached([k for digest in self.held for k in self.cached[digest]])
        self.delete([(d, key) for d in self.held for key in self.variants[d]], "variant")
        for digest in self.held:
            c.pause("original", digest)
        self.renew(mark_blob_missing=True)  # durable before any original goes
        self.delete([(d, keys.original_key(d)) for d in self.held], "window")
        for digest in self.held:
            c.pause("rows", digest)
        finished = c.meta.gc_finish_many(list(self.held), self.token, now=c.clock())
        for digest in list(self.held):
            if digest in finished:
                continue
            try:
                self.done(digest, c._finish_refused(digest, keys.original_key(digest)))
            except (StorageError, MetadataError) as exc:
                self.fail(digest, exc)
        # A transform that read an original before it went may have cached a variant since.
        c.delete_cached([k for digest in self.held for k in self.cached[digest]])
        for digest in list(self.held):
            self.done(digest, COLLECTED)


@dataclass
class GcResult:
    grace: float
    dry_run: bool = False
    candidates: int = 0
    collected: int = 0
    skipped: int = 0
    lease_lost: int = 0
    race_lost: int = 0
    errors: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.race_lost == 0

    def summary(self) -> str:
        if self.dry_run:
            return (
                f"gc: dry run: {self.candidates} object(s) would be collected "
                f"(grace {self.grace:g} s, {self.seconds:.1f} s)"
            )
        return (
            f"gc: collected {self.collected} of {self.candidates} candidate(s) "
            f"(skipped {self.skipped}, lease lost {self.lease_lost}, race lost {self.race_lost}, "
            f"errors {self.errors}; grace {self.grace:g} s, {self.seconds:.1f} s)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def run_gc(
    services: Any,
    *,
    grace: float | None = None,
    confirm: bool = False,
    dry_run: bool = False,
    batch: int = BULK_BATCH,
    clock: Clock = time.time,
    pause: Pause = no_pause,
    progress: Progress | None = None,
    report: Report | None = None,
    detail: Report | None = None,
    lease_seconds: float | None = None,
    workers: int | None = None,
) -> GcResult:
    """Collect unreferenced content older than the grace. Raises GraceTooShort or GcRefused."""
    grace_s = float(services.settings.gc_grace_seconds if grace is None else grace)
    check_grace(grace_s, confirm)
    meta = services.meta
    unreviewed = meta.count_unreviewed_damage()
    if unreviewed:
        raise GcRefused(
            f"gc: refusing to run: reconcile found {unreviewed} unreviewed problem(s) "
            "(missing blobs or references to missing objects); run `image-origin reconcile` "
            "to re-check, then `image-origin reconcile --ack-all` once reviewed"
        )
    progress = progress or NoProgress()
    report = report or log_report("gc")
    detail = detail or no_report
    collector = Collector(
        services, clock=clock, pause=pause, lease_seconds=lease_seconds, workers=workers
    )
    log_each = logger.isEnabledFor(logging.INFO)  # one event per object only when it shows
    started = time.monotonic()
    cutoff = clock() - grace_s
    result = GcResult(grace=grace_s, dry_run=dry_run)
    progress.start(meta.count_gc_candidates(cutoff))
    after: tuple[float, str] | None = None
    with meta.bulk(), deferred_pruning(services.blobs):
        while page := meta.gc_candidates(cutoff, after, batch):
            after = (page[-1].deleted_at, page[-1].hash)
            digests = [candidate.hash for candidate in page]
            result.candidates += len(digests)
            if dry_run:
                for digest in digests:
                    detail(f"would collect {digest}")
                progress.advance(len(digests))
                continue
            for digest in digests:
                pause("selected", digest)
            token = collector.new_token()
            claimed, leased_at = collector.claim_many(digests, token, grace_s)
            held = [d for d in digests if d in claimed]
            outcomes = collector.collect_many(held, token, leased_at=leased_at)
            counts: Counter[str] = Counter()
            for digest in digests:
                outcome = outcomes.get(digest, SKIPPED)
                counts[outcome] += 1
                if outcome == COLLECTED:
                    if log_each:
                        event("gc_collected", hash=digest)
                    detail(f"collected {digest}")
                elif outcome in (RACE_LOST, ERROR):
                    report(f"{outcome.replace('_', ' ')}: {digest}")
            for outcome, n in counts.items():
                _count(result, outcome, n)
                metrics.GC_OBJECTS.labels(outcome=outcome).inc(n)
            progress.advance(len(digests))
    result.seconds = time.monotonic() - started
    event("gc_finished", **result.as_dict())
    return result


def _count(result: GcResult, outcome: str, n: int = 1) -> None:
    field = {
        COLLECTED: "collected",
        SKIPPED: "skipped",
        LEASE_LOST: "lease_lost",
        RACE_LOST: "race_lost",
        ERROR: "errors",
    }[outcome]
    setattr(result, field, getattr(result, field) + n)
