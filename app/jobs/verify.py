"""Integrity scrub: re-hash stored originals and take any that fail out of service.

A mismatch marks the object (integrity_failed_at): it is never served or transformed again
(500 ``integrity_failure``), is logged as ``storage_integrity_failure`` and counted in
``image_origin_integrity_failures_total``. Objects already marked count as failures on every
run, so a scheduled verify keeps failing until someone deals with them.

Streams each blob through SHA-256 in 1 MiB chunks (constant memory). Archived originals
(GLACIER, DEEP_ARCHIVE) cannot be read without a restore and are skipped and counted.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Iterator
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
)
from app.logs import event
from app.metadata import DAMAGE_BLOB_MISSING, TIER_ARCHIVED, TIER_RESTORING, ObjectRecord
from app.storage import ArchivedError, NotFound, StorageError, keys

CHUNK = 1024 * 1024


def in_sample(digest: str, percent: float, salt: str) -> bool:
    """Whether ``digest`` is in this run's sample: uniform over hashes, different per salt."""
    if percent >= 100:
        return True
    point = int(hashlib.sha256(f"{salt}:{digest}".encode()).hexdigest()[:12], 16) / 16**12
    return point * 100 < percent


@dataclass
class VerifyResult:
    sample: float | None = None
    since: float | None = None
    dry_run: bool = False
    objects: int = 0
    checked: int = 0
    bytes: int = 0
    failures: int = 0  # mismatches found now plus objects marked earlier
    missing: int = 0
    skipped_archived: int = 0
    errors: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.failures == 0 and self.missing == 0 and self.errors == 0

    def summary(self) -> str:
        scope = "all" if self.sample is None else f"{self.sample:g}% sample"
        prefix = "verify: dry run:" if self.dry_run else "verify:"
        if self.since is not None:
            scope += " since " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        return (
            f"{prefix} checked {self.checked} of {self.objects} object(s) ({scope}, "
            f"{self.bytes} bytes); integrity failures {self.failures}; missing {self.missing}; "
            f"archived skipped {self.skipped_archived}; errors {self.errors} "
            f"({self.seconds:.1f} s)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _objects(meta: Any, since: float | None, batch: int) -> Iterator[ObjectRecord]:
    if since is None:
        yield from meta.iter_objects(batch)
        return
    after: tuple[float, str] | None = None
    while page := meta.objects_created_since(since, after, batch):
        after = (page[-1].created_at, page[-1].hash)
        yield from page


def run_verify(
    services: Any,
    *,
    sample: float | None = None,
    since: float | None = None,
    seed: str | None = None,
    dry_run: bool = False,
    batch: int = DEFAULT_BATCH,
    clock: Clock = time.time,
    progress: Progress | None = None,
    report: Report | None = None,
    detail: Report | None = None,
) -> VerifyResult:
    """Re-hash originals: all, a ``sample`` percent (fresh random choice per run unless
    ``seed`` is given), or those created ``since`` (a Unix time). ``dry_run``: report only,
    mark nothing."""
    if sample is not None and not 0 < sample <= 100:
        raise ValueError("sample must be a percentage in (0, 100]")
    meta = services.meta
    report = report or log_report("verify")
    detail = detail or no_report
    progress = progress or NoProgress()
    salt = seed if seed is not None else secrets.token_hex(8)
    result = VerifyResult(sample=sample, since=since, dry_run=dry_run)
    started = time.monotonic()
    progress.start(meta.count_objects(since))
    for obj in _objects(meta, since, batch):
        result.objects += 1
        progress.advance()
        if sample is not None and not in_sample(obj.hash, sample, salt):
            continue
        if obj.claimed_at(clock()) or (obj.ref_count <= 0 and obj.blob_missing_at is not None):
            continue  # being collected
        if obj.tier in (TIER_ARCHIVED, TIER_RESTORING):
            result.skipped_archived += 1
            continue
        _check(services, obj, result, clock, report, detail)
    result.seconds = time.monotonic() - started
    event("verify_finished", **result.as_dict())
    return result


def _check(
    services: Any,
    obj: ObjectRecord,
    result: VerifyResult,
    clock: Clock,
    report: Report,
    detail: Report,
) -> None:
    key = keys.original_key(obj.hash)
    hasher = hashlib.sha256()
    try:
        with services.blobs.open(key) as stream:
            while chunk := stream.read(CHUNK):
                hasher.update(chunk)
                result.bytes += len(chunk)
    except NotFound:
        _missing(services, obj, result, clock, report)
        return
    except ArchivedError:
        result.skipped_archived += 1
        return
    except StorageError as exc:
        result.errors += 1
        report(f"storage error: {obj.hash} ({exc})")
        return
    result.checked += 1
    actual = hasher.hexdigest()
    if actual == obj.hash and obj.integrity_failed_at is None:
        detail(f"ok {obj.hash}")
        return
    result.failures += 1
    if actual == obj.hash:
        report(f"integrity failure (marked earlier; bytes match now): {obj.hash}")
        return
    report(f"integrity failure: {obj.hash}")
    if result.dry_run:
        return
    event(
        "storage_integrity_failure",
        level=logging.ERROR,
        key=key,
        expected=obj.hash,
        actual=actual,
        source="verify",
    )
    metrics.INTEGRITY_FAILURES.inc()
    services.meta.mark_integrity_failure(obj.hash, clock())


def _missing(
    services: Any, obj: ObjectRecord, result: VerifyResult, clock: Clock, report: Report
) -> None:
    fresh = services.meta.get_object(obj.hash)
    if fresh is None or fresh.claimed_at(clock()):
        return  # collected while we looked
    result.missing += 1
    report(f"missing blob: {obj.hash}")
    if result.dry_run:
        return
    now = clock()
    services.meta.mark_blob_missing(obj.hash, now)
    if fresh.ref_count > 0:
        services.meta.record_damage(obj.hash, DAMAGE_BLOB_MISSING, now, "found by verify")
