"""Builds the backends from settings and holds them for the app, the CLI and the jobs."""

from __future__ import annotations

import fcntl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.cache import FileLocks, MemoryCache, RedisCache, RedisLocks, VariantCache, redis_client
from app.jobs.queue import InlineRunner, JobRunner, RQRunner
from app.metadata import MetadataStore, open_metadata_store
from app.service import ImageService
from app.settings import Settings
from app.signing import UrlSigner
from app.storage import BlobStore, open_blob_store
from app.variant_service import VariantService


@dataclass
class Services:
    settings: Settings
    blobs: BlobStore
    meta: MetadataStore
    service: ImageService
    cache: VariantCache
    jobs: JobRunner | None
    redis: Any = None
    signer: UrlSigner = field(default_factory=lambda: UrlSigner(()))
    extras: dict[str, object] = field(default_factory=dict)

    def readiness(self) -> dict[str, bool]:
        probes = {"database": self.meta.ping, "storage": self.blobs.ping}
        if self.redis is not None:
            probes["redis"] = self.redis.ping
        checks: dict[str, bool] = {}
        for name, probe in probes.items():
            try:
                probe()
                checks[name] = True
            except Exception:
                checks[name] = False
        return checks

    def close(self) -> None:
        self.meta.close()


def build_services(settings: Settings, *, migrate: bool = True, jobs: str = "auto") -> Services:
    """``jobs``: "auto" (RQ with Redis, else in-process), "inline", or "none" (a job worker
    itself, which must not enqueue onto itself)."""
    settings.data_path.mkdir(parents=True, exist_ok=True)
    settings.staging_dir.mkdir(parents=True, exist_ok=True)
    blobs = open_blob_store(settings)
    meta = open_metadata_store(settings)
    if migrate:
        migrate_locked(settings, meta)
    file_locks = FileLocks(settings.data_path / "locks")
    redis = None
    cache: VariantCache
    if settings.redis_url:
        redis = redis_client(settings.redis_url)
        cache = RedisCache(redis, settings.cache_item_max_bytes, settings.cache_ttl_seconds)
        locks: Any = RedisLocks(redis, file_locks)
    else:
        cache = MemoryCache(settings.cache_memory_bytes, settings.cache_item_max_bytes)
        locks = file_locks
    service = ImageService(settings, blobs, meta)
    service.variants = VariantService(
        settings, blobs, meta, cache, locks, service.read_original, service.clock
    )
    runner: JobRunner | None = None
    if jobs == "auto" and redis is not None:
        runner = RQRunner(redis_client(settings.redis_url, timeout=5))  # type: ignore[arg-type]
    elif jobs in ("auto", "inline"):
        from app.jobs import tasks

        runner = InlineRunner(tasks.resolve)
    services = Services(
        settings, blobs, meta, service, cache, runner, redis, UrlSigner(settings.signing_keys)
    )
    if runner is not None and settings.pregenerate:
        service.on_new_content = lambda digest: runner.enqueue("pregenerate", digest)
    if runner is not None:  # a cold original read once goes back to hot in the background
        service.tiers.on_cold_read = lambda digest: runner.enqueue("promote", digest)
    if isinstance(runner, InlineRunner):
        from app.jobs import tasks

        tasks.bind(services)
    return services


def migrate_locked(settings: Settings, meta: MetadataStore) -> list[str]:
    """Migrate under a file lock so gunicorn workers starting together take turns."""
    lock_path = Path(settings.data_dir) / ".migrate.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return meta.migrate()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
