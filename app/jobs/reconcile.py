"""Reconcile metadata with itself and with storage; repair what can be repaired.

Passes, each in bounded batches:

1. objects (by hash): recount live references and correct ref_count drift (one transaction per
   object that re-counts under the write lock); check that each original blob exists. A live
   object whose blob is missing is marked (blob_missing_at: uploads of the same bytes rewrite
   it) and recorded as damage; GC refuses to run while damage is unreviewed;
2. references whose hash has no object row: recorded as damage;
3. orphan blobs (originals and variants with no object row) older than the grace: adopted with
   a claimed placeholder row and removed by GC's collector, so an upload of the same bytes that
   races the removal waits for it and then writes its blob again;
4. variant rows without an object; then open findings are re-checked and resolved when the
   blob is back (re-uploaded) or nothing references the content any more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from app import metrics
from app.jobs.common import (
    DEFAULT_BATCH,
    Clock,
    NoProgress,
    Pause,
    Progress,
    Report,
    batched,
    check_grace,
    log_report,
    no_pause,
    no_report,
)
from app.jobs.gc import COLLECTED, LEASE_LOST, Collector
from app.logs import event
from app.metadata import DAMAGE_BLOB_MISSING, DAMAGE_MISSING_OBJECT, ObjectRecord
from app.storage import BlobInfo, StorageError, keys


@dataclass
class ReconcileResult:
    grace: float
    dry_run: bool = False
    objects: int = 0
    ref_counts_fixed: int = 0
    missing_blobs: int = 0  # live objects whose original is gone: damage
    garbage_blobs_missing: int = 0  # unreferenced objects whose blob is gone: GC finishes them
    blobs_repaired: int = 0  # marked missing earlier, present again
    missing_objects: int = 0  # hashes referenced with no object row: damage
    orphans_found: int = 0
    orphans_removed: int = 0
    orphans_young: int = 0  # no row yet, but younger than the grace: maybe an upload in flight
    variant_rows_removed: int = 0
    damage_resolved: int = 0
    unreviewed_damage: int = 0
    errors: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        if self.dry_run:
            return self.errors == 0 and self.missing_blobs == 0 and self.missing_objects == 0
        return self.errors == 0 and self.unreviewed_damage == 0

    def summary(self) -> str:
        prefix = "reconcile: dry run:" if self.dry_run else "reconcile:"
        return (
            f"{prefix} {self.objects} object(s); ref_count fixed {self.ref_counts_fixed}; "
            f"missing blobs {self.missing_blobs}; references to missing objects "
            f"{self.missing_objects}; orphans removed {self.orphans_removed} of "
            f"{self.orphans_found} (younger than grace {self.orphans_young}); repaired "
            f"{self.blobs_repaired}; resolved {self.damage_resolved}; unreviewed damage "
            f"{self.unreviewed_damage}; errors {self.errors} ({self.seconds:.1f} s)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class _Reconciler:
    def __init__(
        self,
        services: Any,
        result: ReconcileResult,
        *,
        batch: int,
        clock: Clock,
        pause: Pause,
        report: Report,
        detail: Report,
        lease_seconds: float | None,
    ) -> None:
        self.services = services
        self.meta = services.meta
        self.blobs = services.blobs
        self.result = result
        self.batch = batch
        self.clock = clock
        self.pause = pause
        self.report = report
        self.detail = detail
        self.dry_run = result.dry_run
        self.collector = Collector(services, clock=clock, pause=pause, lease_seconds=lease_seconds)

    def _fix(self, kind: str) -> None:
        metrics.RECONCILE_FIXES.labels(kind=kind).inc()

    # --- 1. objects --------------------------------------------------------------------------
    def objects(self, progress: Progress, check_blobs: bool) -> None:
        progress.start(self.meta.count_objects())
        for page in batched(self.meta.iter_objects(self.batch), self.batch):
            counts = self.meta.live_reference_counts([o.hash for o in page])
            for obj in page:
                self.result.objects += 1
                self._ref_count(obj, counts.get(obj.hash, 0))
                if check_blobs:
                    self._blob(obj)
                progress.advance()

    def _ref_count(self, obj: ObjectRecord, live: int) -> None:
        drift = obj.ref_count != live or (live == 0) != (obj.deleted_at is not None)
        if not drift or obj.claimed_at(self.clock()):
            return
        if self.dry_run:
            self.result.ref_counts_fixed += 1
            self.report(f"ref_count drift: {obj.hash} stored {obj.ref_count}, live {live}")
            return
        fixed = self.meta.fix_ref_count(obj.hash, self.clock())
        if fixed is not None:  # None: the snapshot was stale, the row is consistent
            self.result.ref_counts_fixed += 1
            self._fix("ref_count")
            self.report(f"ref_count fixed: {obj.hash} {fixed[0]} -> {fixed[1]}")
            event("reconcile_ref_count_fixed", hash=obj.hash, old=fixed[0], new=fixed[1])

    def _blob(self, obj: ObjectRecord) -> None:
        if obj.claimed_at(self.clock()):
            return  # GC is on it
        key = keys.original_key(obj.hash)
        if self.blobs.exists(key):
            if obj.blob_missing_at is not None and obj.ref_count > 0 and not self.dry_run:
                if self.meta.clear_blob_missing(obj.hash, self.clock()):
                    self.result.blobs_repaired += 1
                    self._fix("blob_repaired")
            return
        fresh = self.meta.get_object(obj.hash)  # look again: GC may have just collected it
        if fresh is None or fresh.claimed_at(self.clock()) or self.blobs.exists(key):
            return
        now = self.clock()
        if fresh.ref_count <= 0:
            self.result.garbage_blobs_missing += 1
            if not self.dry_run:
                self.meta.mark_blob_missing(obj.hash, now)  # restore refuses, uploads rewrite
            return
        self.result.missing_blobs += 1
        self.report(f"missing blob: {obj.hash} ({fresh.ref_count} live reference(s))")
        if not self.dry_run:
            self.meta.mark_blob_missing(obj.hash, now)
            self.meta.record_damage(
                obj.hash, DAMAGE_BLOB_MISSING, now, f"{fresh.ref_count} live reference(s)"
            )
            self._fix("blob_missing")
            event("reconcile_blob_missing", level=logging.ERROR, hash=obj.hash)

    # --- 2. references without an object ----------------------------------------------------
    def missing_objects(self) -> None:
        after = ""
        while page := self.meta.refs_without_object(after, self.batch):
            after = page[-1][0]
            for digest, count in page:
                self.result.missing_objects += 1
                self.report(f"references to a missing object: {digest} ({count} reference(s))")
                if not self.dry_run:
                    detail = f"{count} reference(s)"
                    self.meta.record_damage(digest, DAMAGE_MISSING_OBJECT, self.clock(), detail)
                    self._fix("missing_object")
                    event("reconcile_missing_object", level=logging.ERROR, hash=digest)

    # --- 3. orphan blobs ---------------------------------------------------------------------
    def orphans(self, cutoff: float) -> None:
        for chunk in batched(self.blobs.iter_blobs("sha256:"), self.batch):
            self._orphan_batch(chunk, cutoff)
        for chunk in batched(self.blobs.iter_blobs("variant:"), self.batch):
            self._orphan_batch(chunk, cutoff)

    def _orphan_batch(self, chunk: list[BlobInfo], cutoff: float) -> None:
        newest: dict[str, tuple[float, int, str]] = {}
        for info in chunk:
            digest = keys.hex_of(info.key)
            stamp = info.last_modified.timestamp()
            size = info.size if info.key.startswith("sha256:") else 0
            seen = newest.get(digest)
            if seen is None or stamp > seen[0]:
                newest[digest] = (stamp, max(size, seen[1] if seen else 0), info.key)
        existing = self.meta.existing_hashes(list(newest))
        for digest, (stamp, size, key) in newest.items():
            if digest in existing:
                continue
            if stamp > cutoff:
                self.result.orphans_young += 1
                continue
            self.result.orphans_found += 1
            self.detail(f"orphan: {key}")
            if self.dry_run:
                continue
            token = self.collector.new_token()
            now = self.clock()
            adopted = self.meta.gc_adopt_orphan(
                digest,
                size,
                now=now,
                deleted_at=stamp,
                token=token,
                lease_until=self.collector.lease_until(),
            )
            if not adopted:
                continue  # a row (an upload) or references appeared meanwhile
            # Another reconcile (a second node) may have removed it between our listing and our
            # adoption, leaving no row, which our adoption then recreated: collect that
            # placeholder, but do not count someone else's removal as ours.
            still_there = self._still_stored(key)
            outcome = self.collector.collect(digest, token)
            if outcome == COLLECTED and not still_there:
                continue
            if outcome == COLLECTED:
                self.result.orphans_removed += 1
                self._fix("orphan_removed")
                event("reconcile_orphan_removed", hash=digest)
                self.detail(f"orphan removed: {digest}")
            else:
                if outcome != LEASE_LOST:
                    self.result.errors += 1
                self.report(f"orphan not removed ({outcome}): {digest}")

    def _still_stored(self, key: str) -> bool:
        try:
            return self.blobs.exists(key)
        except StorageError:
            return True  # unknown: the collector's own deletes will tell

    # --- 4. tidy and resolve -----------------------------------------------------------------
    def variant_rows(self) -> None:
        if not self.dry_run:
            removed = self.meta.delete_variant_rows_without_object()
            self.result.variant_rows_removed += removed
            if removed:
                self._fix("variant_row_removed")

    def resolve(self) -> None:
        for finding in _open_damage(self.meta, self.batch):
            if self._resolved(finding.hash, finding.kind):
                if self.meta.resolve_damage(finding.hash, finding.kind, self.clock()):
                    self.result.damage_resolved += 1
                    self.report(f"resolved: {finding.kind} {finding.hash}")

    def _resolved(self, digest: str, kind: str) -> bool:
        obj = self.meta.get_object(digest)
        if kind == DAMAGE_MISSING_OBJECT:
            return obj is not None or not self.meta.live_references(digest)
        if obj is None or obj.ref_count <= 0:
            return True  # nothing live depends on the blob any more
        if self.blobs.exists(keys.original_key(digest)):
            self.meta.clear_blob_missing(digest, self.clock())
            return True
        return False


def _open_damage(meta: Any, batch: int) -> Iterator[Any]:
    after: tuple[str, str] | None = None
    while page := meta.list_damage(open_only=True, after=after, limit=batch):
        after = (page[-1].hash, page[-1].kind)
        yield from page


def run_reconcile(
    services: Any,
    *,
    grace: float | None = None,
    confirm: bool = False,
    dry_run: bool = False,
    storage: bool = True,
    batch: int = DEFAULT_BATCH,
    clock: Clock = time.time,
    pause: Pause = no_pause,
    progress: Progress | None = None,
    report: Report | None = None,
    detail: Report | None = None,
    lease_seconds: float | None = None,
) -> ReconcileResult:
    """``storage=False`` skips the blob checks and the orphan listing (metadata only: cheap)."""
    grace_s = float(services.settings.gc_grace_seconds if grace is None else grace)
    check_grace(grace_s, confirm, what="reconcile")
    result = ReconcileResult(grace=grace_s, dry_run=dry_run)
    started = time.monotonic()
    cutoff = clock() - grace_s
    r = _Reconciler(
        services,
        result,
        batch=batch,
        clock=clock,
        pause=pause,
        report=report or log_report("reconcile"),
        detail=detail or no_report,
        lease_seconds=lease_seconds,
    )
    r.objects(progress or NoProgress(), check_blobs=storage)
    r.missing_objects()
    if storage:
        r.orphans(cutoff)
    r.variant_rows()
    if not dry_run:
        r.resolve()
    result.unreviewed_damage = services.meta.count_unreviewed_damage()
    result.seconds = time.monotonic() - started
    event("reconcile_finished", **result.as_dict())
    return result


def acknowledge(services: Any, hashes: list[str] | None, *, clock: Clock = time.time) -> int:
    """Mark open findings as reviewed (all of them with None) so GC may run again."""
    now = clock()
    if hashes is None:
        return services.meta.review_damage(None, now)
    return sum(services.meta.review_damage(h, now) for h in hashes)
