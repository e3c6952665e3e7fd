"""What the lifecycle jobs (gc, reconcile, verify, tier) share: progress, reports, grace, keys.

Each job is a function over the Services container that streams the metadata in keyset-paged
batches (bounded memory whatever the store's size), reports each finding through ``report`` (the
CLI prints them; RQ and the in-process runner log them) and returns a result dataclass whose
``ok`` decides the exit code.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

from app.imaging.variants import PIPELINE_VERSION
from app.logs import event
from app.metadata import VariantRecord
from app.settings import FORMATS, Settings, VariantSpec
from app.storage import StorageError, keys
from app.variant_service import settings_fingerprint

#: A grace below this (from the setting or ``--grace``) needs explicit confirmation: with a
#: grace of 0, content deleted by a user a moment ago is gone before "undo" can restore it.
GRACE_FLOOR_SECONDS = 60
DEFAULT_BATCH = 500
#: gc and tier: rows per batch. Each batch step is one transaction whose rows lie on pages all
#: over the table, so a transaction of 2,000 rows writes far fewer pages per row than one of
#: 500, and the per-batch syncs (gc's durable marking commit, tier's directory syncs) come a
#: quarter as often. Memory stays small (a few MB at this size).
BULK_BATCH = 2000

#: ``pause(stage, hash)``: a seam for tests (and nothing else) to interleave other actors at
#: the protocol's steps deterministically; the default does nothing.
Pause = Callable[[str, str], None]
Report = Callable[[str], None]
Clock = Callable[[], float]


class GraceTooShort(ValueError):
    """A grace period below the safety floor without confirmation."""


class Progress(Protocol):
    def start(self, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...


class NoProgress:
    def start(self, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


def no_pause(stage: str, digest: str) -> None:
    pass


def no_report(line: str) -> None:
    pass


def log_report(job: str) -> Report:
    """Findings as log events, for runs without a terminal (RQ, in-process runner)."""

    def report(line: str) -> None:
        event(f"{job}_finding", level=logging.WARNING, finding=line)

    return report


def check_grace(grace: float, confirmed: bool, *, what: str = "gc") -> None:
    if grace < 0:
        raise GraceTooShort(f"{what}: the grace period cannot be negative")
    if grace < GRACE_FLOOR_SECONDS and not confirmed:
        raise GraceTooShort(
            f"{what}: a grace period of {grace:g} s is below the safety floor of "
            f"{GRACE_FLOOR_SECONDS} s (deleted images could not be restored); "
            "pass --grace with --yes to confirm"
        )


def cache_key_suffixes(settings: Settings) -> list[str]:
    """What follows ``variant:<hash>/`` in every variant key the current settings can produce.
    It is the same for every hash, so a job computes it once rather than once per object (the
    fingerprints hash the encoder settings)."""
    probe = "0" * 64
    skip = len(keys.variant_prefix(probe))
    suffixes = []
    for fmt in FORMATS:
        for quality in settings.presets:
            fingerprint = settings_fingerprint(VariantSpec(fmt, quality), settings)
            version = f"{PIPELINE_VERSION}-{fingerprint}"
            for width in (None, *settings.widths):
                suffixes.append(keys.variant_key(probe, version, fmt, quality, width)[skip:])
    return suffixes


def cache_keys_for(
    digest: str, settings: Settings, stored: list[str], suffixes: list[str] | None = None
) -> list[str]:
    """Every variant key the cache may hold for ``digest``: the stored ones plus every key the
    current settings can produce (a variant may be cached without having been stored).
    ``suffixes``: ``cache_key_suffixes(settings)``, when the caller keeps it for many hashes."""
    prefix = keys.variant_prefix(digest)  # validates the hash, so every key below is valid
    if suffixes is None:
        suffixes = cache_key_suffixes(settings)
    made = [prefix + suffix for suffix in suffixes]  # distinct: the suffixes are
    if not stored:
        return made  # the usual case, and a GC of many objects builds this for each
    found = dict.fromkeys(stored)
    found.update(dict.fromkeys(made))
    return list(found)


def stored_variant_keys(
    services: Any, digest: str, rows: list[VariantRecord] | None = None
) -> list[str]:
    """Variant blobs of ``digest``: the rows in ``variants`` (``rows`` when the caller read them
    already, for a whole batch) plus any blob under its prefix (a variant whose row was never
    written still has to go)."""
    if rows is None:
        rows = services.meta.list_variants(digest)
    found = dict.fromkeys(v.key for v in rows)
    for info in services.blobs.iter_blobs(keys.variant_prefix(digest)):
        found.setdefault(info.key)
    return list(found)


def deferred_pruning(blobs: Any) -> AbstractContextManager[None]:
    """The store's ``deferred_pruning()`` if it has one (local disk: emptied directories
    removed in the background, all of them by the end of the block), else a block that
    changes nothing."""
    defer = getattr(blobs, "deferred_pruning", None)
    return defer() if defer is not None else contextlib.nullcontext()


def delete_blobs(
    blobs: Any,
    keys_: list[str],
    *,
    before: Callable[[str], bool] | None = None,
    workers: int | None = None,
) -> dict[str, StorageError | None]:
    """Delete ``keys_``: the store's ``delete_many`` if it has one, else one ``delete`` at a
    time with the same contract (``before``, and the answer: each key attempted, with None
    or its StorageError; the keys ``before`` stopped are not in it)."""
    many = getattr(blobs, "delete_many", None)
    if many is not None:
        return many(keys_, before=before, **({} if workers is None else {"workers": workers}))
    done: dict[str, StorageError | None] = {}
    for key in dict.fromkeys(keys_):
        if before is not None and not before(key):
            break
        try:
            blobs.delete(key)
            done[key] = None
        except StorageError as exc:
            done[key] = exc
    return done


def move_blobs(
    blobs: Any, keys_: list[str], tier: str, *, workers: int | None = None
) -> dict[str, StorageError | None]:
    """``set_tier`` each key: the store's ``set_tier_many`` if it has one, else one at a time.
    Each key with None (moved) or its StorageError."""
    many = getattr(blobs, "set_tier_many", None)
    if many is not None:
        return many(keys_, tier, **({} if workers is None else {"workers": workers}))
    done: dict[str, StorageError | None] = {}
    for key in dict.fromkeys(keys_):
        try:
            blobs.set_tier(key, tier)
            done[key] = None
        except StorageError as exc:
            done[key] = exc
    return done


def batched(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
