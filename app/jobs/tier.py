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

Work goes a page (``--batch``) at a time: the page's moves inside one ``durable_batch`` (local
disk: each touched directory fsynced once, at the end, rather than twice per move), then the
page's tiers recorded in one transaction, each still a compare-and-set from hot. The moves of a
page go to the store together (``move_blobs``): the originals, then the stored variants of
those that moved (their rows in one query); on local disk a few threads, because pruning the
emptied fan-out directories waits on the device (see ``app.storage.local``). The record follows
the moves' durability, as it followed each move before. Nothing depends on that order for
safety: a blob is readable from either tier and a tier recorded wrongly after a crash heals
itself (a move finds the blob already there; a read from the cold directory promotes it back).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from app import metrics
from app.jobs.common import (
    BULK_BATCH,
    Clock,
    NoProgress,
    Progress,
    Report,
    deferred_pruning,
    log_report,
    move_blobs,
    no_report,
    stored_variant_keys,
)
from app.logs import event
from app.metadata import (
    TIER_ARCHIVED,
    TIER_COLD,
    TIER_HOT,
    TIER_RESTORING,
    ObjectRecord,
)
from app.storage import ArchivedError, NotFound, StorageError, keys
from app.storage.base import ARCHIVE_CLASSES, durable_batch

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
    batch: int = BULK_BATCH,
    clock: Clock = time.time,
    progress: Progress | None = None,
    report: Report | None = None,
    detail: Report | None = None,
    workers: int | None = None,
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
    with meta.bulk(), deferred_pruning(blobs):
        while page := meta.tier_candidates(cutoff, after, batch):
            after = (page[-1].last_accessed_at or 0.0, page[-1].hash)
            result.candidates += len(page)
            if dry_run:
                for obj in page:
                    detail(f"would move {obj.hash} to {target}")
            else:
                _move_page(services, page, target, result, report, detail, workers)
            progress.advance(len(page))
    if not dry_run:
        _follow_restores(services, result, batch, report)
    result.seconds = time.monotonic() - started
    event("tier_finished", **result.as_dict())
    return result


def _move_page(
    services: Any,
    page: list[ObjectRecord],
    target: str,
    result: TierResult,
    report: Report,
    detail: Report,
    workers: int | None,
) -> None:
    """Move the page's blobs, then record the tiers of those that moved in one transaction."""
    moved: list[str] = []
    try:
        with durable_batch(services.blobs):
            moved = _move_blobs(services, page, target, result, report, workers)
    except StorageError as exc:  # the moves' directories could not be synced: record nothing
        result.errors += len(moved)
        report(f"tier error: {len(moved)} moved object(s) not recorded ({exc})")
        return
    recorded = services.meta.set_object_tier_many(moved, target, expected=(TIER_HOT,))
    for digest in moved:
        if digest in recorded:
            result.moved += 1
            detail(f"moved {digest} to {target}")
        else:
            result.skipped += 1  # someone else moved or promoted it meanwhile
    if recorded:
        metrics.TIER_MOVES.labels(to=target).inc(len(recorded))


def _move_blobs(
    services: Any,
    page: list[ObjectRecord],
    target: str,
    result: TierResult,
    report: Report,
    workers: int | None,
) -> list[str]:
    """Move the page's originals (and, to a readable cold tier, the stored variants of those
    that moved); the hashes whose tier should now be recorded."""
    blobs = services.blobs
    originals = {keys.original_key(obj.hash): obj.hash for obj in page}
    done = move_blobs(blobs, list(originals), "cold", workers=workers)
    ok: list[str] = []
    for key, digest in originals.items():
        exc = done.get(key)
        if exc is None or isinstance(exc, ArchivedError):
            ok.append(digest)  # (ArchivedError: already in the archive class)
        else:
            _failed(digest, exc, result, report)
    if target != TIER_COLD or not ok:
        return ok
    rows = services.meta.list_variants_many(ok)
    owner: dict[str, str] = {}
    failed: set[str] = set()
    for digest in ok:
        try:
            for key in stored_variant_keys(services, digest, rows.get(digest)):
                owner[key] = digest
        except StorageError as exc:
            failed.add(digest)
            _failed(digest, exc, result, report)
    done = move_blobs(blobs, list(owner), "cold", workers=workers)
    for key, exc in done.items():
        digest = owner[key]
        # NotFound: removed meanwhile (GC, or a re-render replaced it)
        if exc is not None and not isinstance(exc, NotFound) and digest not in failed:
            failed.add(digest)
            _failed(digest, exc, result, report)
    return [digest for digest in ok if digest not in failed]


def _failed(digest: str, exc: StorageError, result: TierResult, report: Report) -> None:
    if isinstance(exc, NotFound):
        result.skipped += 1  # collected meanwhile, or missing: reconcile reports that
    else:
        result.errors += 1
        report(f"tier error: {digest} ({exc})")


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
