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

Reconcile uses the same collector for orphan blobs: it adopts them with a placeholder row that
it claims at once (``MetadataStore.gc_adopt_orphan``), so uploads racing it behave as above.
"""

from __future__ import annotations

import logging
import secrets
import time
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
    cache_keys_for,
    check_grace,
    log_report,
    no_pause,
    no_report,
    stored_variant_keys,
)
from app.logs import event
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


class Collector:
    """Deletes one claimed object: cache entries, stored variants, the original, the rows."""

    def __init__(
        self,
        services: Any,
        *,
        clock: Clock = time.time,
        pause: Pause = no_pause,
        lease_seconds: float | None = None,
    ) -> None:
        self.services = services
        self.meta = services.meta
        self.blobs = services.blobs
        self.cache = services.cache
        self.clock = clock
        self.pause = pause
        self.lease = float(lease_seconds or services.settings.gc_lease_seconds)
        self.margin = lease_margin(self.lease)

    @staticmethod
    def new_token() -> str:
        return secrets.token_hex(16)

    def lease_until(self) -> float:
        return self.clock() + self.lease

    def claim(self, digest: str, token: str, grace: float) -> bool:
        now = self.clock()
        return self.meta.gc_claim(
            digest, token, now=now, cutoff=now - grace, lease_until=now + self.lease
        )

    def _renew(self, digest: str, token: str, *, mark_blob_missing: bool = False) -> bool:
        now = self.clock()
        return self.meta.gc_renew(
            digest,
            token,
            now=now,
            margin=self.margin,
            lease_until=now + self.lease,
            mark_blob_missing=mark_blob_missing,
        )

    def collect(self, digest: str, token: str) -> str:
        original = keys.original_key(digest)
        self.pause("claimed", digest)
        try:
            variants = stored_variant_keys(self.services, digest)
            cached = cache_keys_for(digest, self.services.settings, variants)
            if not self._renew(digest, token):
                return LEASE_LOST
            self.cache.delete(*cached)
            for key in variants:
                self.pause("variant", digest)
                if not self._renew(digest, token):
                    return LEASE_LOST
                self.blobs.delete(key)
            self.pause("original", digest)
            if not self._renew(digest, token, mark_blob_missing=True):
                return LEASE_LOST
            # The residual window: from the renewal's commit to the delete reaching storage.
            self.pause("window", digest)
            self.blobs.delete(original)
            self.pause("rows", digest)
            if not self.meta.gc_finish(digest, token, now=self.clock()):
                return self._finish_refused(digest, original)
        except (StorageError, MetadataError) as exc:
            event("gc_object_failed", level=logging.WARNING, hash=digest, error=str(exc))
            return ERROR
        # A transform that read the original before it went may have cached a variant since.
        self.cache.delete(*cached)
        return COLLECTED

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
    batch: int = DEFAULT_BATCH,
    clock: Clock = time.time,
    pause: Pause = no_pause,
    progress: Progress | None = None,
    report: Report | None = None,
    detail: Report | None = None,
    lease_seconds: float | None = None,
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
    collector = Collector(services, clock=clock, pause=pause, lease_seconds=lease_seconds)
    started = time.monotonic()
    cutoff = clock() - grace_s
    result = GcResult(grace=grace_s, dry_run=dry_run)
    progress.start(meta.count_gc_candidates(cutoff))
    after: tuple[float, str] | None = None
    while page := meta.gc_candidates(cutoff, after, batch):
        after = (page[-1].deleted_at, page[-1].hash)
        for candidate in page:
            digest = candidate.hash
            result.candidates += 1
            if dry_run:
                detail(f"would collect {digest}")
                progress.advance()
                continue
            pause("selected", digest)
            token = collector.new_token()
            if not collector.claim(digest, token, grace_s):
                outcome = SKIPPED
            else:
                outcome = collector.collect(digest, token)
            _count(result, outcome)
            metrics.GC_OBJECTS.labels(outcome=outcome).inc()
            if outcome == COLLECTED:
                event("gc_collected", hash=digest)
                detail(f"collected {digest}")
            elif outcome in (RACE_LOST, ERROR):
                report(f"{outcome.replace('_', ' ')}: {digest}")
            progress.advance()
    result.seconds = time.monotonic() - started
    event("gc_finished", **result.as_dict())
    return result


def _count(result: GcResult, outcome: str) -> None:
    field = {
        COLLECTED: "collected",
        SKIPPED: "skipped",
        LEASE_LOST: "lease_lost",
        RACE_LOST: "race_lost",
        ERROR: "errors",
    }[outcome]
    setattr(result, field, getattr(result, field) + 1)
