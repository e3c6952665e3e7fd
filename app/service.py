"""The use cases: ingest, look up, delete, restore, read originals (and, later, variants).

This is the one module that joins imaging, storage, metadata, cache and jobs. It holds the
business rules (write order, dedup, privacy, integrity) and no HTTP: callers get records or
domain errors from ``app.errors``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from app import metrics
from app.errors import (
    DomainError,
    Forbidden,
    Gone,
    IntegrityFailure,
    NotFoundError,
    Unavailable,
)
from app.imaging.probe import (
    ProbeResult,
    decode_check_reads_markers,
    markers_pass_decode_check,
    probe,
)
from app.logs import event
from app.metadata import (
    TIER_ARCHIVED,
    TIER_HOT,
    TIER_RESTORING,
    ContentInfo,
    MetadataError,
    MetadataStore,
    NeedsBlob,
    ObjectClaimed,
    ObjectRecord,
    Page,
    ReferenceRecord,
)
from app.settings import Settings, VariantSpec
from app.staging import StagingFile
from app.storage import ArchivedError, BlobStore, NotFound, StorageError, keys
from app.tiering import Tiering

if TYPE_CHECKING:
    from app.variant_service import Variant, VariantService

READ_CHUNK = 256 * 1024
SPOOL_MEMORY = 8 * 1024 * 1024
INGEST_ATTEMPTS = 50
# Waits (s) before each new try of a pre-generated variant the transform pool had no room for.
PREGENERATE_BACKOFF = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# New content at least this large has its decode check run on a second thread while its blob is
# written (see ``ingest``); below it the check takes a few milliseconds and runs first.
CONCURRENT_CHECK_BYTES = 256 * 1024


@dataclass(frozen=True)
class IngestResult:
    reference: ReferenceRecord
    object: ObjectRecord
    deduplicated: bool


@dataclass
class VerifiedOriginal:
    """Bytes of an original that matched their hash, ready to stream."""

    object: ObjectRecord
    size: int
    spool: BinaryIO
    data: bytes | None = None  # the whole original, when it was read into memory

    def iter_chunks(self) -> Iterator[bytes]:
        try:
            self.spool.seek(0)
            while chunk := self.spool.read(READ_CHUNK):
                yield chunk
        finally:
            self.spool.close()

    def read(self) -> bytes:
        self.spool.seek(0)
        try:
            return self.spool.read()
        finally:
            self.spool.close()

    def source(self) -> bytes | BinaryIO:
        """What a decoder reads: the bytes when the spool is in memory, else the spool file
        itself (a large original is then never held whole in memory). Valid until ``close``."""
        if self.data is not None:
            return self.data
        self.spool.seek(0)
        return self.spool

    def close(self) -> None:
        self.spool.close()


class ImageService:
    def __init__(
        self,
        settings: Settings,
        blobs: BlobStore,
        meta: MetadataStore,
        *,
        on_new_content: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.blobs = blobs
        self.meta = meta
        self.clock = clock
        self.on_new_content = on_new_content
        self.tiers = Tiering(blobs, meta)
        self.variants: VariantService | None = None  # wired by app.container

    # --- ingest ----------------------------------------------------------------------------
    def new_staging_file(self) -> StagingFile:
        return StagingFile(self.settings.staging_dir, self.settings.max_upload_bytes)

    def ingest(
        self,
        staged: StagingFile,
        *,
        owner: str,
        filename: str | None,
        private: bool,
    ) -> IngestResult:
        """Validate staged bytes and store them once; the caller discards the staging file.

        Write order: blob first (idempotent), then one metadata transaction. A row therefore
        never points at a missing blob; a crash in between leaves an orphan blob for reconcile.
        Racing GC: a row GC has claimed makes us wait; a row GC may have emptied
        (blob_missing_at) or removed makes us write the blob again (NeedsBlob); and an upload
        that had to write checks the blob once more after its commit (``_ensure_blob``).

        Checks: the type and the pixel limits always come first, before anything is written.
        Content already stored under this hash passed the full decode check when it was first
        uploaded; the same bytes decode the same way, so a duplicate is only re-checked
        against the type and pixel limits (which settings may have changed since). New content
        gets the decode check, and it always ends before the metadata commit, so no row is ever
        written for bytes that failed it. A sequential JPEG's check reads its markers instead of
        decoding (4 ms for 10 MB; ``probe``), run by the blob store while the copy's fsync waits
        (``_InlineCheck``). Anything else is decoded (65 ms or more for a 10 MB JPEG here) on a
        second thread while the blob is written (``_DecodeCheck``); writing first means such a
        failing upload may briefly have installed a blob nobody references: ``_abandon_blob``
        removes it again (see there for why that cannot take a blob from under another upload).
        """
        digest = staged.finish()
        known = self._get_object(digest) is not None
        check: _DecodeCheck | _InlineCheck | None = None
        if known or staged.size >= CONCURRENT_CHECK_BYTES:
            info = probe(staged.path, self.settings, decode=False)
            if not known and decode_check_reads_markers(staged.path):
                check = _InlineCheck(staged.path, self.settings)
            elif not known:
                check = _DecodeCheck(staged.path, self.settings)
        else:
            info = probe(staged.path, self.settings, decode=True)
        try:
            return self._store(staged, digest, info, check, owner, filename, private)
        finally:
            if check is not None:
                check.wait()  # never leave a decode running past its upload

    def _store(
        self,
        staged: StagingFile,
        digest: str,
        info: ProbeResult,
        check: _DecodeCheck | _InlineCheck | None,
        owner: str,
        filename: str | None,
        private: bool,
    ) -> IngestResult:
        """The write loop of ``ingest``; ``check`` (if any) is awaited before the commit."""
        content = ContentInfo(digest, info.mime_type, staged.size, info.width, info.height)
        key = keys.original_key(digest)
        wrote_any = False
        for attempt in range(INGEST_ATTEMPTS):
            existing = self._get_object(digest)
            must_write = existing is None or existing.blob_missing_at is not None
            if existing is not None and existing.claimed_at(self.clock()):
                # GC owns this content until its lease ends; wait rather than race it.
                time.sleep(min(0.05 * (attempt + 1), 1.0))
                continue
            if must_write:
                try:
                    alongside = check.run if isinstance(check, _InlineCheck) else None
                    wrote = self._put_blob(key, staged.path, digest, alongside)
                except DomainError:
                    if check is not None:
                        check.result()  # an undecodable upload is 422, whatever storage says
                    raise
                if check is not None:
                    self._await_check(check, key, staged.path, digest, installed=wrote)
                    check = None
                wrote_any = wrote or wrote_any
            elif check is not None:
                self._await_check(check, key, staged.path, digest, installed=False)
                check = None
            try:
                ref, obj = self.meta.add_reference(
                    content,
                    ref_id=new_reference_id(),
                    owner=owner,
                    original_filename=filename,
                    private=private,
                    now=self.clock(),
                    blob_written=must_write,
                )
            except NeedsBlob:
                continue  # the row vanished (collected) between our look and our commit
            except ObjectClaimed:
                time.sleep(min(0.05 * (attempt + 1), 1.0))
                continue
            except MetadataError as exc:
                raise Unavailable(
                    "metadata store unavailable", code="database_unavailable"
                ) from exc
            if must_write:
                wrote_any = self._ensure_blob(key, staged.path, digest) or wrote_any
            metrics.UPLOADS.labels(deduplicated=str(not wrote_any).lower()).inc()
            if wrote_any:
                metrics.BYTES_INGESTED.inc(staged.size)
                if self.on_new_content is not None:
                    self._notify_new_content(digest)
            return IngestResult(ref, obj, deduplicated=not wrote_any)
        raise Unavailable("content is being collected; retry", code="busy")

    def _await_check(
        self,
        check: _DecodeCheck | _InlineCheck,
        key: str,
        path: str,
        digest: str,
        *,
        installed: bool,
    ) -> None:
        """The decode check's verdict, before any commit. A failure removes the blob this
        upload installed (``installed``: put_file returned True) and re-raises (422)."""
        try:
            check.result()
        except BaseException:
            if installed:
                self._abandon_blob(key, path, digest)
            raise

    def _abandon_blob(self, key: str, path: str, digest: str) -> None:
        """Remove the blob this upload installed for bytes that failed the decode check.

        Why this never takes a blob another upload relies on: another upload can only commit a
        row for these bytes after passing the decode check on the same bytes (or skipping it
        because a row exists, which again requires someone to have passed it), and the check
        is deterministic: same bytes, same verdict. Should it ever differ (a node with another
        codec version during a rolling upgrade), the order below still keeps every row's blob:
        delete first, then look for a row. A row committed before the look is seen here and
        the blob is written back from our staging file; a row committed after it was committed
        after the delete, and its upload's ``_ensure_blob`` (after its commit) rewrites the
        blob. If the delete or the look fails, the blob stays (an orphan reconcile removes).
        """
        try:
            self.blobs.delete(key)
        except StorageError as exc:
            event("storage_delete_failed", key=key, error=type(exc).__name__)
            return
        try:
            needed = self.meta.get_object(digest) is not None
        except MetadataError as exc:
            event("abandon_blob_check_failed", key=key, error=type(exc).__name__)
            needed = True
        if needed:
            event("blob_restored_after_failed_check", key=key)
            try:
                self._put_blob(key, path, digest)
            except DomainError:
                pass  # already logged; the row's upload rewrites it after its commit

    def _ensure_blob(self, key: str, path: str, digest: str) -> bool:
        """After the commit: put_file may have found an orphan blob (returning False) that
        reconcile, or a collector whose placeholder row we could not see, removed before our
        row existed. Our row is live now, so nothing removes the blob any more: one more
        look, and one more write if it is gone, is final."""
        try:
            if self.blobs.exists(key):
                return False
        except StorageError as exc:
            event("storage_check_failed", key=key, error=type(exc).__name__)
            return False
        event("blob_rewritten_after_commit", key=key)
        return self._put_blob(key, path, digest)

    def _put_blob(
        self, key: str, path: str, digest: str, alongside: Callable[[], object] | None = None
    ) -> bool:
        try:
            return self.blobs.put_file(key, path, sha256_hex=digest, alongside=alongside)
        except StorageError as exc:
            event("storage_write_failed", key=key, error=type(exc).__name__)
            raise Unavailable("storage unavailable", code="storage_unavailable") from exc

    def _notify_new_content(self, digest: str) -> None:
        try:
            self.on_new_content(digest)  # type: ignore[misc]
        except Exception as exc:  # a failed enqueue never fails the upload
            event("pregenerate_enqueue_failed", hash=digest, error=repr(exc))

    # --- references ------------------------------------------------------------------------
    def get_reference(self, owner: str, ref_id: str) -> tuple[ReferenceRecord, ObjectRecord]:
        ref = self._db(self.meta.get_reference, ref_id)
        if ref is None or ref.owner != owner or ref.deleted_at is not None:
            raise NotFoundError("no such image")
        obj = self._get_object(ref.hash)
        if obj is None:
            raise NotFoundError("no such image")
        return ref, obj

    def list_references(
        self, owner: str, limit: int, cursor: str | None
    ) -> tuple[list[tuple[ReferenceRecord, ObjectRecord]], str | None]:
        page: Page[ReferenceRecord] = self._db(self.meta.list_references, owner, limit, cursor)
        items = []
        for ref in page.items:
            obj = self._get_object(ref.hash)
            if obj is not None:
                items.append((ref, obj))
        return items, page.next_cursor

    def delete(self, owner: str, ref_id: str) -> ReferenceRecord:
        before = self._get_object_of_reference(ref_id)
        ref = self._db(self.meta.delete_reference, ref_id, owner, self.clock())
        if ref is None:
            raise NotFoundError("no such image")
        after = self._get_object(ref.hash)
        was_public = before is not None and before.has_public_ref
        if was_public and (after is None or after.private or after.ref_count <= 0):
            self._announce_purge(ref.hash)
        return ref

    def _get_object_of_reference(self, ref_id: str) -> ObjectRecord | None:
        ref = self._db(self.meta.get_reference, ref_id)
        return None if ref is None else self._get_object(ref.hash)

    def _announce_purge(self, digest: str) -> None:
        """Content stopped being public: shared caches (CDN, nginx) may hold any of its public
        URLs for a year, made or not by this node, so name every URL the routes accept (and
        the prefix, for CDNs that purge by prefix) for the operator's purge hook."""
        base = (self.settings.cdn_base_url or "").rstrip("/")
        widths: list[str] = [""] + [f"/{w}" for w in self.settings.widths]
        paths = [f"{digest}/original"] + [
            f"{digest}/{fmt}/{preset}{width}"
            for fmt in ("jpeg", "webp", "avif", "auto")
            for preset in self.settings.presets
            for width in widths
        ]
        event(
            "cdn_purge_required",
            hash=digest,
            prefix=f"{base}/{digest}/",
            urls=[f"{base}/{p}" for p in paths],
        )

    def restore(self, owner: str, ref_id: str) -> tuple[ReferenceRecord, ObjectRecord]:
        ref = self._db(self.meta.restore_reference, ref_id, owner, self.clock())
        if ref is None:
            raise NotFoundError("no such image, or it has been collected")
        obj = self._get_object(ref.hash)
        if obj is None:  # pragma: no cover - restore only succeeds while the row exists
            raise NotFoundError("no such image")
        return ref, obj

    # --- serving ---------------------------------------------------------------------------
    def object_for_serving(self, digest: str, *, signed: bool = False) -> ObjectRecord:
        """Apply API.md's order of checks after the path and signature: 404, 410, 403."""
        if not keys.is_hex_digest(digest):
            raise NotFoundError("no such content")
        obj = self._get_object(digest)
        if obj is None:
            raise NotFoundError("no such content")
        if obj.ref_count <= 0:
            raise Gone("every reference to this content has been deleted")
        if obj.private and not signed:
            raise Forbidden("this content is private; use a signed URL", code="private")
        if obj.integrity_failed_at is not None:
            raise IntegrityFailure("stored content failed its integrity check")
        return obj

    def get_variant(self, obj: ObjectRecord, spec: VariantSpec) -> Variant:
        """A variant of content already checked by ``object_for_serving``."""
        assert self.variants is not None
        return self.variants.get(obj, spec)

    def pregenerate(self, digest: str) -> int:
        """Make the configured common variants; skips content that is gone or broken.

        A background job shares the worker's transform slots with requests, so a busy pool
        (503 for a request) only makes it wait and try again: the in-process runner has no
        retries of its own. A variant still not made after ``PREGENERATE_BACKOFF`` is left for
        its first request; the others are still made, then the job fails (RQ retries it).
        """
        assert self.variants is not None
        obj = self._get_object(digest)
        if obj is None or obj.ref_count <= 0 or obj.integrity_failed_at is not None:
            return 0
        made = 0
        missed: list[str] = []
        for spec in self.settings.pregenerate:
            for pause in (*PREGENERATE_BACKOFF, None):
                try:
                    if self.variants.ensure(obj, spec).source == "transform":
                        made += 1
                    break
                except Unavailable:
                    if pause is None:
                        missed.append(spec.path)
                    else:
                        time.sleep(pause)
        if missed:
            raise Unavailable(f"pre-generation left {', '.join(missed)} for later", code="busy")
        return made

    def record_access(self, obj: ObjectRecord) -> None:
        """Throttled: at most one write per object per interval, and never on the hot path's
        critical section (a failure here does not fail the request)."""
        now = self.clock()
        last = obj.last_accessed_at
        if last is not None and now - last < self.settings.access_interval_seconds:
            return
        try:
            if self.meta.record_access(obj.hash, now, self.settings.access_interval_seconds):
                metrics.ACCESS_WRITES.inc()
        except MetadataError as exc:
            event("access_record_failed", hash=obj.hash, error=str(exc))

    def check_original_readable(self, obj: ObjectRecord) -> None:
        """For HEAD: the same 503 a GET would give while an archived original is restored,
        without reading (or re-hashing) the bytes."""
        if obj.tier in (TIER_ARCHIVED, TIER_RESTORING):
            self.tiers.await_restore(obj)

    def read_original(self, obj: ObjectRecord) -> VerifiedOriginal:
        """Spool the original while re-hashing it; hand it out only if the hash matches.

        Tiers: a cold original (GLACIER_IR, local cold directory) is read at once and promoted
        back to hot in the background. An archived one (GLACIER, DEEP_ARCHIVE) is restored on
        demand: 503 with Retry-After while S3 restores it, then it is copied back to STANDARD
        for good and served. Variants never come here when cached or stored.
        """
        key = keys.original_key(obj.hash)
        if obj.tier in (TIER_ARCHIVED, TIER_RESTORING):
            self.tiers.await_restore(obj)  # 503 while S3 is still restoring it
        try:
            verified = self._read_verified(obj, key)
        except ArchivedError:
            self.tiers.start_restore(obj)  # 503, unless a restored copy is readable already
            try:
                verified = self._read_verified(obj, key)
            except ArchivedError as exc:
                raise self.tiers.restoring(obj) from exc
        if obj.tier != TIER_HOT:
            self.tiers.after_cold_read(obj)
        return verified

    def promote(self, digest: str) -> bool:
        """Move an original and its stored variants back to the hot tier (see app.tiering)."""
        return self.tiers.promote(digest)

    def _read_verified(self, obj: ObjectRecord, key: str) -> VerifiedOriginal:
        if obj.size <= SPOOL_MEMORY:
            return self._read_in_memory(obj, key)
        return self._read_spooled(obj, key)

    def _read_in_memory(self, obj: ObjectRecord, key: str) -> VerifiedOriginal:
        """An original small enough to hold: read as one bytes object of its recorded size
        (and one byte more, to notice a longer blob), hashed, and decoded in place. Spooling
        it in 256 KiB chunks and reading the spool back cost twice the hash itself (about
        4 ms of a 2.7 MB original's cold variant)."""
        try:
            with self.blobs.open(key) as stream:
                data = _read_up_to(stream, obj.size + 1)
                hasher = hashlib.sha256(data)
                if len(data) > obj.size:  # longer than the content: not it; hash the rest
                    while chunk := stream.read(READ_CHUNK):
                        hasher.update(chunk)
        except NotFound as exc:
            event("storage_blob_missing", key=key)
            raise IntegrityFailure("stored content is missing") from exc
        except ArchivedError:
            raise
        except (StorageError, OSError) as exc:
            raise Unavailable("storage unavailable", code="storage_unavailable") from exc
        actual = hasher.hexdigest()
        if actual != obj.hash:
            self._integrity_failure(key, obj.hash, actual)
        return VerifiedOriginal(obj, len(data), io.BytesIO(data), data)

    def _read_spooled(self, obj: ObjectRecord, key: str) -> VerifiedOriginal:
        spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - handed to the caller
            max_size=SPOOL_MEMORY, dir=str(self.settings.staging_dir)
        )
        hasher = hashlib.sha256()
        size = 0
        try:
            self.settings.staging_dir.mkdir(parents=True, exist_ok=True)
            with self.blobs.open(key) as stream:
                while chunk := stream.read(READ_CHUNK):
                    hasher.update(chunk)
                    spool.write(chunk)
                    size += len(chunk)
        except NotFound as exc:
            spool.close()
            event("storage_blob_missing", key=key)
            raise IntegrityFailure("stored content is missing") from exc
        except ArchivedError:
            spool.close()
            raise
        except StorageError as exc:
            spool.close()
            raise Unavailable("storage unavailable", code="storage_unavailable") from exc
        except OSError as exc:
            # The spool of a large original rolls over to the staging disk; a full or failing
            # disk there is this server's trouble, not the client's: retry later (503).
            spool.close()
            code = (
                "insufficient_storage"
                if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                else ("staging_unavailable")
            )
            event("original_spool_failed", key=key, error=code)
            raise Unavailable("no room to read the original; retry later", code=code) from exc
        except BaseException:
            spool.close()
            raise
        actual = hasher.hexdigest()
        if actual != obj.hash:
            spool.close()
            self._integrity_failure(key, obj.hash, actual)
        return VerifiedOriginal(obj, size, spool)

    def _integrity_failure(self, key: str, expected: str, actual: str) -> None:
        event("storage_integrity_failure", level=40, key=key, expected=expected, actual=actual)
        metrics.INTEGRITY_FAILURES.inc()
        try:
            self.meta.mark_integrity_failure(expected, self.clock())
        except MetadataError as exc:
            event("mark_integrity_failure_failed", hash=expected, error=str(exc))
        raise IntegrityFailure("stored content failed its integrity check")

    # --- helpers ---------------------------------------------------------------------------
    def _get_object(self, digest: str) -> ObjectRecord | None:
        return self._db(self.meta.get_object, digest)

    @staticmethod
    def _db(fn, *args):  # type: ignore[no-untyped-def]
        try:
            return fn(*args)
        except MetadataError as exc:
            raise Unavailable("metadata store unavailable", code="database_unavailable") from exc


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """``size`` bytes, or fewer at the end of the stream (a read may return less)."""
    data = stream.read(size)
    if len(data) >= size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size and (chunk := stream.read(size - got)):
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def new_reference_id() -> str:
    """Opaque, unguessable reference ids: knowing one never reveals another."""
    return "img_" + secrets.token_urlsafe(16)


class _InlineCheck:
    """The decode check of new content run in the request thread, inside the blob write.

    For a sequential JPEG the check reads markers rather than decoding (``jpeg_structure``),
    and that search holds the GIL: on a thread of its own it stalled the write's copy, hash
    and fsync at every hand-over (a 10 MB upload took 36 to 41 ms instead of 22). So the blob
    store runs it (``put_file(alongside=...)``) while the copy's fsync waits on the disk; a
    failure there installs nothing. Same interface as ``_DecodeCheck``: ``result()`` runs the
    check itself if the store did not (the blob was there already, or the write failed first).
    """

    def __init__(self, path: str, settings: Settings) -> None:
        self._path = path
        self._settings = settings
        self._ran = False
        self._error: BaseException | None = None

    def run(self) -> None:
        """The check, once; raises its error (422 and such). The file was probed already,
        so only the markers are read; a file they do not settle is decoded here."""
        if not self._ran:
            self._ran = True
            try:
                if not markers_pass_decode_check(self._path):
                    probe(self._path, self._settings, decode=True)
            except BaseException as exc:
                self._error = exc
        if self._error is not None:
            raise self._error

    def wait(self) -> None:
        """Nothing runs in the background; present for the interface."""

    def result(self) -> None:
        self.run()


class _DecodeCheck:
    """``probe(path, decode=True)`` on a thread: the decode check of new content, run while its
    blob is written. Pillow's decoders release the GIL, so the two really overlap."""

    def __init__(self, path: str, settings: Settings) -> None:
        self._result: ProbeResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(path, settings), name="decode-check", daemon=True
        )
        self._thread.start()

    def _run(self, path: str, settings: Settings) -> None:
        try:
            self._result = probe(path, settings, decode=True)
        except BaseException as exc:  # handed to the request thread by result()
            self._error = exc

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> ProbeResult:
        """Wait for the check; return its probe result or raise its error (422 and such)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result
