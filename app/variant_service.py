"""The variant use case: Redis/memory cache -> stored variant -> transform from the original.

Each variant is made once: a miss takes a single-flight lock (Redis across nodes, file lock
across this machine's workers) and everyone else waits for the leader's result with a bounded
wait. Transforms run in a small per-process pool, so a worker never runs more than
``transform_concurrency`` at once; past that, or past the time limit, the answer is 503 with
Retry-After rather than an unbounded queue.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from app import metrics
from app.cache import Locks, VariantCache
from app.errors import Unavailable
from app.imaging.pipeline import render
from app.imaging.variants import CONTENT_TYPES, PIPELINE_VERSION
from app.logs import event
from app.metadata import MetadataError, ObjectRecord
from app.settings import Settings, VariantSpec
from app.storage import ArchivedError, BlobStore, NotFound, StorageError, keys

WAIT_STEP_SECONDS = 0.02
WAIT_STEP_MAX_SECONDS = 0.2


@dataclass(frozen=True)
class Variant:
    data: bytes
    content_type: str
    key: str
    source: str  # "cache", "store" or "transform": which tier answered

    @property
    def etag(self) -> str:
        return etag_for_key(self.key)


def etag_for_key(key: str) -> str:
    """Strong, and known before the bytes are: the key holds the content hash, the pipeline
    version and the encoder fingerprint, and the same key always means the same bytes."""
    return '"' + hashlib.sha256(key.encode()).hexdigest()[:32] + '"'


# (id(settings), format, quality) -> (settings, fingerprint): computed once per preset, not per
# request (JSON + SHA-256 was ~5% of a cache hit). Settings are frozen; holding the object keeps
# its id from being reused by another one.
_FINGERPRINTS: dict[tuple[int, str, str], tuple[Settings, str]] = {}


def settings_fingerprint(spec: VariantSpec, settings: Settings) -> str:
    """8 hex digits over everything that changes a variant's bytes besides the source."""
    cache_key = (id(settings), spec.format, spec.quality)
    cached = _FINGERPRINTS.get(cache_key)
    if cached is not None and cached[0] is settings:
        return cached[1]
    fingerprint = _fingerprint(spec, settings)
    if len(_FINGERPRINTS) > 1024:  # tests build many Settings; a server has one
        _FINGERPRINTS.clear()
    _FINGERPRINTS[cache_key] = (settings, fingerprint)
    return fingerprint


def _fingerprint(spec: VariantSpec, settings: Settings) -> str:
    material = {
        "encoder": dict(settings.presets[spec.quality][spec.format]),
        "max_output_side": settings.max_output_side,
        "background": list(settings.jpeg_background) if spec.format == "jpeg" else None,
        "max_frames": settings.max_frames if spec.format == "webp" else None,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:8]


def variant_storage_key(digest: str, spec: VariantSpec, settings: Settings) -> str:
    version = f"{PIPELINE_VERSION}-{settings_fingerprint(spec, settings)}"
    return keys.variant_key(digest, version, spec.format, spec.quality, spec.width)


class TransformPool:
    """At most ``size`` transforms at once in this process, each with a time limit."""

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight = 0
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            # Twice the bound: a job stores its variant after answering, and a store in
            # progress must not hold up the next render.
            self._pool = ThreadPoolExecutor(2 * self.size, thread_name_prefix="transform")
        return self._pool

    def submit(self, fn, *args, busy_until: Future | None = None) -> Future:  # type: ignore[no-untyped-def]
        """Run ``fn(*args)``; it counts against the bound until it returns, or until
        ``busy_until`` is done when given (the CPU-bound part of a job that goes on storing)."""
        with self._lock:
            if self._in_flight >= self.size:
                metrics.TRANSFORM_REJECTED.labels(reason="busy").inc()
                raise Unavailable("too many transforms in progress", code="busy", retry_after=2)
            self._in_flight += 1
            future = self._executor().submit(fn, *args)
        (busy_until or future).add_done_callback(self._done)
        return future

    def _done(self, _future: Future) -> None:
        with self._lock:
            self._in_flight -= 1


class VariantService:
    def __init__(
        self,
        settings: Settings,
        blobs: BlobStore,
        meta,  # type: ignore[no-untyped-def]
        cache: VariantCache,
        locks: Locks,
        read_original,  # type: ignore[no-untyped-def]
        clock=time.time,  # type: ignore[no-untyped-def]
    ) -> None:
        self.settings = settings
        self.blobs = blobs
        self.meta = meta
        self.cache = cache
        self.locks = locks
        self.read_original = read_original
        self.clock = clock
        self.pool = TransformPool(
            settings.transform_concurrency, settings.transform_timeout_seconds
        )

    def get(self, obj: ObjectRecord, spec: VariantSpec, *, stored: bool = False) -> Variant:
        """The variant's bytes; a transform answers before its variant is stored unless
        ``stored`` asks to wait for that too."""
        key = variant_storage_key(obj.hash, spec, self.settings)
        found = self._lookup(key, spec)
        if found is not None:
            return found
        return self._make_once(obj, spec, key, stored)

    def ensure(self, obj: ObjectRecord, spec: VariantSpec) -> Variant:
        """For background pre-generation: same path, returning once the variant is stored
        (a job process may exit right after)."""
        return self.get(obj, spec, stored=True)

    # --- tiers -----------------------------------------------------------------------------
    def _lookup(self, key: str, spec: VariantSpec) -> Variant | None:
        content_type = CONTENT_TYPES[spec.format]
        data = self.cache.get(key)
        if data is not None:
            metrics.CACHE_LOOKUPS.labels(tier="cache").inc()
            return Variant(data, content_type, key, "cache")
        data = self._stored(key)
        if data is not None:
            metrics.CACHE_LOOKUPS.labels(tier="store").inc()
            self.cache.set(key, data)
            return Variant(data, content_type, key, "store")
        return None

    def _stored(self, key: str) -> bytes | None:
        try:
            return self.blobs.get_bytes(key)
        except (NotFound, ArchivedError):
            return None
        except StorageError as exc:
            event("variant_store_read_failed", key=key, error=type(exc).__name__)
            return None

    def _make_once(
        self, obj: ObjectRecord, spec: VariantSpec, key: str, stored: bool = False
    ) -> Variant:
        deadline = time.monotonic() + self.settings.lock_timeout_seconds
        step = WAIT_STEP_SECONDS
        waited = False
        while True:
            handle = self.locks.try_acquire(key, self.settings.lock_timeout_seconds)
            if handle is not None:
                # Someone may have finished between our lookup and our lock.
                found = self._lookup(key, spec) if waited else None
                if found is not None:
                    self.locks.release(key, handle)
                    return found
                return self._transform(obj, spec, key, handle, stored)
            if not waited:
                metrics.SINGLE_FLIGHT_WAITS.inc()
                waited = True
            time.sleep(step)
            step = min(step * 1.5, WAIT_STEP_MAX_SECONDS)
            found = self._lookup(key, spec)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                metrics.TRANSFORM_REJECTED.labels(reason="wait_timeout").inc()
                raise Unavailable("variant is being made; retry", code="busy", retry_after=2)

    def _transform(
        self, obj: ObjectRecord, spec: VariantSpec, key: str, handle: object, stored: bool
    ) -> Variant:
        """Render in the pool; ``handle`` (the single-flight lock) passes to the pool job, which
        releases it once the variant is stored. The request answers as soon as the bytes exist:
        the blob write (fsync) and the metadata row are not on its path."""
        ready: Future[Variant] = Future()
        timeout = self.settings.transform_timeout_seconds
        try:
            job = self.pool.submit(
                self._render_and_store, obj, spec, key, ready, handle, busy_until=ready
            )
        except BaseException:
            self.locks.release(key, handle)
            raise
        try:
            variant = ready.result(timeout=timeout)
            if stored:
                job.result(timeout=timeout)
            return variant
        except FutureTimeout:
            # The work goes on and stores its result; this request stops waiting for it.
            metrics.TRANSFORM_REJECTED.labels(reason="timeout").inc()
            raise Unavailable("transform took too long; retry", code="timeout") from None

    def _render_and_store(
        self,
        obj: ObjectRecord,
        spec: VariantSpec,
        key: str,
        ready: Future[Variant],
        handle: object,
    ) -> None:
        try:
            started = time.perf_counter()
            verified = self.read_original(obj)  # integrity-checked before any decode
            try:
                rendered = render(verified.source(), spec, self.settings)
            finally:
                verified.close()
            elapsed = time.perf_counter() - started
            metrics.TRANSFORMS.labels(format=spec.format).inc()
            metrics.TRANSFORM_SECONDS.labels(format=spec.format).observe(elapsed)
            # Cache first: waiters in this process (and, with Redis, on every node) find it now.
            self.cache.set(key, rendered.data)
            ready.set_result(Variant(rendered.data, rendered.content_type, key, "transform"))
            try:
                self.blobs.put_bytes(key, rendered.data, content_type=rendered.content_type)
                self.meta.add_variant(
                    obj.hash, key, len(rendered.data), rendered.content_type, self.clock()
                )
            except (StorageError, MetadataError) as exc:
                # Served anyway; the next request that misses will try to store it again.
                event("variant_store_write_failed", key=key, error=type(exc).__name__)
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:  # after the answer: a bug in storing, never the request's business
                event("variant_store_write_failed", key=key, error=type(exc).__name__)
        finally:
            # Held until stored, so a waiter in another process that takes the lock next finds
            # the stored variant instead of transforming again.
            self.locks.release(key, handle)
