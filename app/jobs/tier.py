"""Cold tiering: move originals nobody has read for a while to cheaper storage.

Candidates: live, intact, hot objects whose last_accessed_at is older than the cut-off (keyset
batches on idx_objects_access (tier, last_accessed_at)). For each, the original and its stored
variants move with ``BlobStore.set_tier(key, "cold")`` (S3: a copy onto itself with the cold
storage class, metadata kept; local disk: a move to the cold directory), then the tier is
recorded. When the cold class is an archive class (GLACIER, DEEP_ARCHIVE), stored variants stay
where they are: they are what gets served, and an archived variant could not be read without a
restore. Originals read from the cold tier move back by themselves (see
``ImageService.read_original``).

Each run also follows restores still marked ``restoring``: once S3 reports the restore done
(``ongoing-request="false"``), the object is copied back to STANDARD for good.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from app import metrics
from app.jobs.common import (
    DEFAULT_BATCH,
    Clock,
    NoProgress,
    Progress,
    Report,
    log_report,
    no_report,
    stored_variant_keys,
)
from app.logs import event
from app.metadata import TIER_ARCHIVED, TIER_COLD, TIER_HOT, TIER_RESTORING, ObjectRecord
from app.storage import ArchivedError, NotFound, StorageError, keys
from app.storage.base import ARCHIVE_CLASSES

DAY = 86400.0


@dataclass
class TierResult:
    after_days: float
    dry_run: bool = False
    target: str = TIER_COLD
    candidates: int = 0
    moved: int = 0
    skipped: int = 0
    restores_completed: int = 0
    restores_pending: int = 0
    errors: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def summary(self) -> str:
        if self.dry_run:
            return (
                f"tier: dry run: {self.candidates} object(s) not read for {self.after_days:g} "
                f"day(s) would move to {self.target} ({self.seconds:.1f} s)"
            )
        return (
            f"tier: moved {self.moved} of {self.candidates} object(s) to {self.target} "
            f"(not read for {self.after_days:g} day(s); skipped {self.skipped}); restores "
            f"completed {self.restores_completed}, pending {self.restores_pending}; "
            f"errors {self.errors} ({self.seconds:.1f} s)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def cold_tier_name(blobs: Any) -> str:
    """What the metadata calls the cold tier of this store: archived needs a restore."""
    return (
        TIER_ARCHIVED
        if getattr(blobs, "cold_storage_class", None) in ARCHIVE_CLASSES
        else TIER_COLD
    )


def run_tier(
    services: Any,
    *,
    after_days: float | None = None,
    dry_run: bool = False,
    batch: int = DEFAULT_BATCH,
    clock: Clock = time.time,
    progress: Progress | None = None,
    report: Report | None = None,
    detail: Report | None = None,
) -> TierResult:
    days = float(services.settings.tier_after_days if after_days is None else after_days)
    if days < 0:
        raise ValueError("after_days must be >= 0")
    meta, blobs = services.meta, services.blobs
    if not hasattr(blobs, "set_tier"):
        raise RuntimeError(f"{blobs!r} has no storage tiers")
    report = report or log_report("tier")
    detail = detail or no_report
    progress = progress or NoProgress()
    target = cold_tier_name(blobs)
    result = TierResult(after_days=days, dry_run=dry_run, target=target)
    started = time.monotonic()
    cutoff = clock() - days * DAY
    progress.start(meta.count_tier_candidates(cutoff))
    after: tuple[float, str] | None = None
    while page := meta.tier_candidates(cutoff, after, batch):
        after = (page[-1].last_accessed_at or 0.0, page[-1].hash)
        for obj in page:
            result.candidates += 1
            progress.advance()
            if dry_run:
                detail(f"would move {obj.hash} to {target}")
                continue
            _move(services, obj, target, result, report, detail)
    if not dry_run:
        _follow_restores(services, result, batch, report)
    result.seconds = time.monotonic() - started
    event("tier_finished", **result.as_dict())
    return result


def _move(
    services: Any,
    obj: ObjectRecord,
    target: str,
    result: TierResult,
    report: Report,
    detail: Report,
) -> None:
    blobs = services.blobs
    try:
        try:
            blobs.set_tier(keys.original_key(obj.hash), "cold")
        except ArchivedError:
            pass  # already in the archive class
        if target == TIER_COLD:
            for key in stored_variant_keys(services, obj.hash):
                try:
                    blobs.set_tier(key, "cold")
                except NotFound:
                    continue  # removed meanwhile (GC, or a re-render replaced it)
    except NotFound:
        result.skipped += 1  # collected meanwhile, or missing: reconcile reports that
        return
    except StorageError as exc:
        result.errors += 1
        report(f"tier error: {obj.hash} ({exc})")
        return
    if services.meta.set_object_tier(obj.hash, target, expected=(TIER_HOT,)):
        result.moved += 1
        metrics.TIER_MOVES.labels(to=target).inc()
        detail(f"moved {obj.hash} to {target}")
    else:
        result.skipped += 1  # someone else moved or promoted it meanwhile


def _follow_restores(services: Any, result: TierResult, batch: int, report: Report) -> None:
    blobs = services.blobs
    if not hasattr(blobs, "restore_status"):
        return
    after = ""
    while page := services.meta.objects_in_tier(TIER_RESTORING, after, batch):
        after = page[-1].hash
        for obj in page:
            key = keys.original_key(obj.hash)
            try:
                storage_class, ongoing = blobs.restore_status(key)
            except NotFound:
                continue
            except StorageError as exc:
                result.errors += 1
                report(f"restore status error: {obj.hash} ({exc})")
                continue
            if storage_class in ARCHIVE_CLASSES and ongoing is not False:
                result.restores_pending += 1
                continue
            if services.service.promote(obj.hash):
                result.restores_completed += 1
            else:
                result.errors += 1
                event("restore_copy_back_failed", level=logging.WARNING, hash=obj.hash)
