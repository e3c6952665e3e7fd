"""Tiers on the read path: restore archived originals on demand, promote cold ones back.

- hot: STANDARD storage (or the local store's root).
- cold: cheaper but readable at once (S3 GLACIER_IR, the local cold directory). A read serves
  it at once and asks for a background promotion (``on_cold_read``, wired by app.container to
  the job runner), deduplicated per worker.
- archived: S3 GLACIER or DEEP_ARCHIVE; GetObject fails with InvalidObjectState. A read asks
  for RestoreObject (202 started, 409 already in progress -> 503 with Retry-After and tier
  "restoring"; 200 already restored -> read it) and later reads follow the x-amz-restore header
  until ``ongoing-request="false"``; then the object is copied back to STANDARD for good
  (``promote``) and served. ``image-origin tier`` also completes restores nobody asked for again.

Storage and metadata only; the service decides when to call these.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from app import metrics
from app.errors import Unavailable
from app.logs import event
from app.metadata import (
    TIER_ARCHIVED,
    TIER_COLD,
    TIER_HOT,
    TIER_RESTORING,
    MetadataError,
    ObjectRecord,
)
from app.storage import ArchivedError, NotFound, StorageError, keys
from app.storage.base import ARCHIVE_CLASSES

RESTORE_DAYS = 2  # how long S3 keeps the restored copy; we copy it back to STANDARD at once
RESTORE_RETRY_AFTER = 300  # a Glacier standard retrieval takes hours, expedited minutes
PROMOTE_DEDUP_SECONDS = 60.0  # at most one background promotion per object per worker a minute


class Tiering:
    def __init__(self, blobs: Any, meta: Any) -> None:
        self.blobs = blobs
        self.meta = meta
        #: Called with the hash after a read from the cold tier (app.container enqueues a
        #: background promotion); None: cold originals stay cold until read with a runner.
        self.on_cold_read: Callable[[str], None] | None = None
        self._promotions: dict[str, float] = {}
        self._lock = threading.Lock()

    # --- archive ---------------------------------------------------------------------------
    def await_restore(self, obj: ObjectRecord) -> None:
        """Follow x-amz-restore: raise 503 while the restore runs; return once readable."""
        restore_status = getattr(self.blobs, "restore_status", None)
        if restore_status is None:
            return
        try:
            storage_class, ongoing = restore_status(keys.original_key(obj.hash))
        except NotFound:
            return  # the read reports it
        except StorageError as exc:
            raise Unavailable("storage unavailable", code="storage_unavailable") from exc
        if storage_class not in ARCHIVE_CLASSES or ongoing is False:
            return  # back in a readable class, or a restored copy is there: read it
        if ongoing is True:
            raise self.restoring(obj)
        self.start_restore(obj)  # never asked for, or the restored copy has expired

    def start_restore(self, obj: ObjectRecord) -> None:
        """RestoreObject: 202 started or 409 in progress -> raise 503; 200 restored -> return."""
        request_restore = getattr(self.blobs, "request_restore", None)
        if request_restore is None:
            raise self.restoring(obj)
        try:
            answer = request_restore(keys.original_key(obj.hash), days=RESTORE_DAYS)
        except StorageError as exc:
            raise Unavailable("storage unavailable", code="storage_unavailable") from exc
        event("restore_requested", hash=obj.hash, answer=answer)
        if answer != "restored":
            raise self.restoring(obj)

    def restoring(self, obj: ObjectRecord) -> Unavailable:
        """Record tier "restoring" and build the 503 to raise."""
        if obj.tier != TIER_RESTORING:
            try:
                self.meta.set_object_tier(
                    obj.hash, TIER_RESTORING, expected=(TIER_HOT, TIER_COLD, TIER_ARCHIVED)
                )
            except MetadataError as exc:
                event("tier_record_failed", hash=obj.hash, error=str(exc))
        return Unavailable(
            "content is being restored from the archive; retry later",
            code="restoring",
            retry_after=RESTORE_RETRY_AFTER,
        )

    # --- promotion -------------------------------------------------------------------------
    def after_cold_read(self, obj: ObjectRecord) -> None:
        if obj.tier in (TIER_ARCHIVED, TIER_RESTORING):
            # The restored copy is temporary: copy it back to STANDARD for good, now.
            self.promote(obj.hash)
            return
        if self.on_cold_read is None:
            return
        now = time.monotonic()
        with self._lock:
            last = self._promotions.get(obj.hash)
            if last is not None and now - last < PROMOTE_DEDUP_SECONDS:
                return
            if len(self._promotions) > 4096:
                self._promotions.clear()
            self._promotions[obj.hash] = now
        try:
            self.on_cold_read(obj.hash)
        except Exception as exc:  # a failed enqueue never fails the read
            event("promote_enqueue_failed", hash=obj.hash, error=repr(exc))

    def promote(self, digest: str) -> bool:
        """Move an original and its stored variants back to hot; True if this call did.

        Idempotent: safe from several requests, jobs and nodes at once.
        """
        set_tier = getattr(self.blobs, "set_tier", None)
        try:
            obj = self.meta.get_object(digest)
            if obj is None or obj.tier == TIER_HOT or set_tier is None:
                return False
            set_tier(keys.original_key(digest), "hot")
            for key in self._variant_blob_keys(digest):
                try:
                    set_tier(key, "hot")
                except (NotFound, ArchivedError):
                    continue
            moved = self.meta.set_object_tier(
                digest, TIER_HOT, expected=(TIER_COLD, TIER_ARCHIVED, TIER_RESTORING)
            )
        except (StorageError, MetadataError) as exc:
            event("promote_failed", hash=digest, error=type(exc).__name__)
            return False
        if moved:
            metrics.TIER_MOVES.labels(to=TIER_HOT).inc()
            event("tier_promoted", hash=digest, was=obj.tier)
        return moved

    def _variant_blob_keys(self, digest: str) -> list[str]:
        found = dict.fromkeys(v.key for v in self.meta.list_variants(digest))
        for info in self.blobs.iter_blobs(keys.variant_prefix(digest)):
            found.setdefault(info.key)
        return list(found)
