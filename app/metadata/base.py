"""The MetadataStore protocol: what is stored, who references it, when it was read.

No bytes live here (that is the BlobStore's job), and no SQL leaves this package. Records are
plain frozen dataclasses so the service and HTTP layers never see a database row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class MetadataError(Exception):
    """The database failed (unreachable, locked for too long)."""


class ObjectClaimed(MetadataError):
    """The garbage collector holds a lease on this object; retry after it finishes."""


class NeedsBlob(MetadataError):
    """No object row exists, so the blob must be written before a reference can be added."""


# Object tiers (objects.tier): where the original's bytes live and whether they are readable.
TIER_HOT = "hot"  # standard storage
TIER_COLD = "cold"  # cheaper storage, readable at once (S3 GLACIER_IR, local cold directory)
TIER_ARCHIVED = "archived"  # must be restored before a read (S3 GLACIER, DEEP_ARCHIVE)
TIER_RESTORING = "restoring"  # a restore was asked for and has not been copied back yet
TIERS = (TIER_HOT, TIER_COLD, TIER_ARCHIVED, TIER_RESTORING)

# Kinds of damage reconcile records (the damage table); GC refuses while one is unreviewed.
DAMAGE_BLOB_MISSING = "blob_missing"  # a live object whose original blob is gone
DAMAGE_MISSING_OBJECT = "missing_object"  # references to a hash with no object row


@dataclass(frozen=True)
class ContentInfo:
    """What ingest learned about new content before it touched the database."""

    hash: str
    mime_type: str
    size: int
    width: int
    height: int


@dataclass(frozen=True)
class ObjectRecord:
    hash: str
    mime_type: str
    size: int
    width: int
    height: int
    ref_count: int
    created_at: float
    last_accessed_at: float | None
    deleted_at: float | None
    tier: str
    integrity_failed_at: float | None = None
    blob_missing_at: float | None = None
    gc_token: str | None = None
    gc_lease_until: float | None = None
    has_public_ref: bool = False

    @property
    def storage_key(self) -> str:
        return f"sha256:{self.hash}"

    @property
    def private(self) -> bool:
        """Private when no live reference is public (API.md: every live reference private)."""
        return not self.has_public_ref

    def claimed_at(self, now: float) -> bool:
        return self.gc_token is not None and (self.gc_lease_until or 0) > now


@dataclass(frozen=True)
class ReferenceRecord:
    id: str
    hash: str
    owner: str
    original_filename: str | None
    private: bool
    created_at: float
    deleted_at: float | None
    seq: int


@dataclass(frozen=True)
class VariantRecord:
    hash: str
    key: str
    size: int
    content_type: str
    created_at: float


@dataclass(frozen=True)
class GcCandidate:
    hash: str
    deleted_at: float


@dataclass(frozen=True)
class DamageRecord:
    hash: str
    kind: str
    found_at: float
    detail: str
    reviewed_at: float | None
    resolved_at: float | None


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


class MetadataStore(Protocol):
    """Objects (one per content hash), references (one per upload) and stored variants."""

    def migrate(self) -> list[str]:
        """Apply pending migrations; returns the names applied."""

    def ping(self) -> None: ...

    def close(self) -> None: ...

    def bulk(self) -> AbstractContextManager[None]:
        """A block in which this thread runs many short transactions back to back (gc, tier):
        the backend may tune its session for that. What each transaction guarantees does not
        change."""

    # --- objects ---------------------------------------------------------------------------
    def get_object(self, hash: str) -> ObjectRecord | None: ...

    def list_objects(self, limit: int, cursor: str | None) -> Page[ObjectRecord]: ...

    def iter_objects(self, batch: int = 500) -> Iterator[ObjectRecord]: ...

    def mark_integrity_failure(self, hash: str, now: float) -> None: ...

    def record_access(self, hash: str, now: float, interval: float) -> bool:
        """Set last_accessed_at unless it was set within ``interval``; True if written."""

    # --- references ------------------------------------------------------------------------
    def add_reference(
        self,
        content: ContentInfo,
        *,
        ref_id: str,
        owner: str,
        original_filename: str | None,
        private: bool,
        now: float,
        blob_written: bool,
    ) -> tuple[ReferenceRecord, ObjectRecord]:
        """One transaction: upsert the object (ref_count + 1, deleted_at cleared), insert the
        reference. Raises NeedsBlob when the row is absent and ``blob_written`` is False, and
        ObjectClaimed while GC holds a live lease on the object."""

    def get_reference(self, ref_id: str) -> ReferenceRecord | None: ...

    def list_references(
        self, owner: str, limit: int, cursor: str | None
    ) -> Page[ReferenceRecord]: ...

    def delete_reference(self, ref_id: str, owner: str, now: float) -> ReferenceRecord | None:
        """Mark deleted and decrement in one transaction; None if absent or already deleted."""

    def restore_reference(self, ref_id: str, owner: str, now: float) -> ReferenceRecord | None:
        """Undo a delete while the object row remains and GC has not claimed it."""

    def live_references(self, hash: str) -> list[ReferenceRecord]: ...

    # --- variants --------------------------------------------------------------------------
    def add_variant(
        self, hash: str, key: str, size: int, content_type: str, now: float
    ) -> None: ...

    def list_variants(self, hash: str) -> list[VariantRecord]: ...

    def list_variants_many(self, hashes: list[str]) -> dict[str, list[VariantRecord]]:
        """``list_variants`` for many hashes in one query: every hash is a key (``[]`` when it
        has no variant rows)."""

    # --- lifecycle: gc ---------------------------------------------------------------------
    # The collection protocol (app/jobs/gc.py): claim -> renew before every deletion (the last
    # renewal also marks the blob as possibly missing) -> delete blobs -> finish. Every step
    # re-checks in one statement or transaction, so two collectors, or a collector and an
    # upload, never act on a stale read.
    def gc_candidates(
        self, cutoff: float, after: tuple[float, str] | None, limit: int
    ) -> list[GcCandidate]:
        """Objects with ref_count = 0 and deleted_at <= cutoff, ordered by (deleted_at, hash),
        strictly after ``after`` (keyset paging; index idx_objects_gc)."""

    def count_gc_candidates(self, cutoff: float) -> int: ...

    def gc_claim(
        self, hash: str, token: str, *, now: float, cutoff: float, lease_until: float
    ) -> bool:
        """One statement: take the lease if ref_count = 0, deleted_at <= cutoff, no live
        reference exists, and no other live lease is held. True if this token now holds it."""

    def gc_renew(
        self,
        hash: str,
        token: str,
        *,
        now: float,
        margin: float,
        lease_until: float,
        mark_blob_missing: bool = False,
    ) -> bool:
        """Extend the lease to ``lease_until`` only if ``token`` still holds it with more than
        ``margin`` seconds left and ref_count is still 0. With ``mark_blob_missing``, also set
        blob_missing_at (kept if already set), so any later upload rewrites the blob; that
        commit is durable before this returns (see ``gc_renew_many``)."""

    def gc_finish(self, hash: str, token: str, *, now: float) -> bool:
        """One transaction: if ``token`` holds a live lease, ref_count = 0 and no live reference
        exists, delete the object's deleted references, its variant rows and the object row."""

    # Batches: the same three steps for many objects in one transaction each (the collector's
    # cost is otherwise one commit per object and step). Each object is still tested on its own
    # conditions and has its own lease: the answer is the set of hashes for which the
    # one-object method would have returned True, and an object that fails (revived, lease
    # lost) drops out of the batch without stopping the others.
    def gc_claim_many(
        self, hashes: list[str], token: str, *, now: float, cutoff: float, lease_until: float
    ) -> set[str]:
        """``gc_claim`` for each of ``hashes``: the ones ``token`` now holds."""

    def gc_renew_many(
        self,
        hashes: list[str],
        token: str,
        *,
        now: float,
        margin: float,
        lease_until: float,
        mark_blob_missing: bool = False,
    ) -> set[str]:
        """``gc_renew`` for each of ``hashes``: the ones renewed (and marked). With
        ``mark_blob_missing`` the commit is durable before this returns, even on a backend
        whose other commits are not (SQLite with synchronous=NORMAL), because the caller goes
        on to delete the blobs: a mark lost to a power failure after the deletion reached the
        disk would leave an unmarked row without its blob, which an upload could revive."""

    def gc_finish_many(self, hashes: list[str], token: str, *, now: float) -> set[str]:
        """``gc_finish`` for each of ``hashes`` in one transaction: the ones whose rows were
        deleted."""

    def gc_adopt_orphan(
        self,
        hash: str,
        size: int,
        *,
        now: float,
        deleted_at: float,
        token: str,
        lease_until: float,
    ) -> bool:
        """For a blob with no object row (and no references): insert a placeholder row with
        ref_count = 0, blob_missing_at set and the lease held by ``token``, so the normal
        collection protocol removes it and a concurrent upload waits, then rewrites. False if a
        row or a reference for the hash exists."""

    # --- lifecycle: reconcile --------------------------------------------------------------
    def existing_hashes(self, hashes: list[str]) -> set[str]:
        """Which of ``hashes`` have an object row (at most a few hundred at a time)."""

    def live_reference_counts(self, hashes: list[str]) -> dict[str, int]:
        """Live (not deleted) references per hash; hashes without any are absent."""

    def fix_ref_count(self, hash: str, now: float) -> tuple[int, int] | None:
        """One transaction: recount live references and correct ref_count (and deleted_at:
        set to ``now`` when the count becomes 0, cleared when it is above 0). Returns
        (old, new) if anything changed, else None. Skips objects under a live GC lease."""

    def refs_without_object(self, after: str, limit: int) -> list[tuple[str, int]]:
        """(hash, number of references) for referenced hashes with no object row, by hash."""

    def delete_variant_rows_without_object(self) -> int: ...

    def mark_blob_missing(self, hash: str, now: float) -> bool:
        """Set blob_missing_at unless set or the object is under a live GC lease."""

    def clear_blob_missing(self, hash: str, now: float) -> bool:
        """Clear blob_missing_at on a live object (ref_count > 0) not under a live GC lease."""

    def record_damage(self, hash: str, kind: str, now: float, detail: str = "") -> None:
        """Upsert a finding; one that had been resolved and recurs needs a new review."""

    def resolve_damage(self, hash: str, kind: str, now: float) -> bool: ...

    def review_damage(self, hash: str | None, now: float) -> int:
        """Acknowledge open findings (of ``hash``, or all with None); returns how many."""

    def list_damage(
        self, *, open_only: bool = True, after: tuple[str, str] | None = None, limit: int = 500
    ) -> list[DamageRecord]:
        """Findings ordered by (hash, kind), strictly after ``after``."""

    def count_unreviewed_damage(self) -> int:
        """Open (unresolved) findings nobody has reviewed: GC refuses while this is > 0."""

    # --- lifecycle: verify and tier --------------------------------------------------------
    def count_objects(self, created_since: float | None = None) -> int: ...

    def objects_created_since(
        self, since: float, after: tuple[float, str] | None, limit: int
    ) -> list[ObjectRecord]:
        """Objects with created_at >= since, by (created_at, hash) (idx_objects_created)."""

    def tier_candidates(
        self, cutoff: float, after: tuple[float, str] | None, limit: int
    ) -> list[ObjectRecord]:
        """Live, intact, hot objects with last_accessed_at <= cutoff, by (last_accessed_at,
        hash), strictly after ``after`` (index idx_objects_access)."""

    def count_tier_candidates(self, cutoff: float) -> int: ...

    def objects_in_tier(self, tier: str, after: str, limit: int) -> list[ObjectRecord]:
        """Objects in ``tier`` with hash > after, by hash."""

    def set_object_tier(
        self, hash: str, tier: str, *, expected: tuple[str, ...] | None = None
    ) -> bool:
        """Record the tier; with ``expected``, only if the current tier is one of them."""

    def set_object_tier_many(
        self, hashes: list[str], tier: str, *, expected: tuple[str, ...] | None = None
    ) -> set[str]:
        """``set_object_tier`` for each of ``hashes`` in one transaction: the ones recorded."""


def iter_all_objects(store: MetadataStore, batch: int = 500) -> Iterator[ObjectRecord]:
    """Every object, one ``list_objects`` page at a time: the same for every backend, and
    memory stays bounded by ``batch`` however large the store."""
    cursor: str | None = None
    while True:
        page = store.list_objects(batch, cursor)
        yield from page.items
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
