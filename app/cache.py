"""Variant bytes in Redis (or an in-process LRU) and single-flight locks.

The cache is an optimisation, never a dependency: every Redis failure is caught, counted, logged
at most once per interval, and answered as a miss, so a dead or slow Redis costs speed, not
correctness. Locks fall back the same way: Redis lock across nodes, else a file lock across this
machine's workers.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from app import metrics
from app.logs import event

if TYPE_CHECKING:
    import redis

REDIS_PREFIX = "image-origin:"
LOG_INTERVAL_SECONDS = 30.0


class VariantCache(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, data: bytes) -> None: ...

    def delete(self, *keys: str) -> None: ...


class MemoryCache:
    """An LRU bounded by total bytes, for one worker process when no Redis is configured."""

    def __init__(self, budget_bytes: int, item_max_bytes: int) -> None:
        self.budget = budget_bytes
        self.item_max = item_max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def set(self, key: str, data: bytes) -> None:
        if len(data) > self.item_max or len(data) > self.budget:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._items[key] = data
            self._size += len(data)
            while self._size > self.budget:
                _, evicted = self._items.popitem(last=False)
                self._size -= len(evicted)

    def delete(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                old = self._items.pop(key, None)
                if old is not None:
                    self._size -= len(old)


class _Throttle:
    """Log a failing backend once per interval instead of once per request."""

    def __init__(self, interval: float = LOG_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._last = 0.0

    def report(self, op: str, exc: Exception) -> None:
        metrics.CACHE_ERRORS.labels(op=op).inc()
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            event("redis_unavailable", level=logging.WARNING, op=op, error=type(exc).__name__)


def _redis() -> ModuleType:
    """redis-py, imported on first use: a node without Redis configured never loads it (about
    8 MB of resident memory in every worker)."""
    import redis

    return redis


def redis_client(url: str, timeout: float = 0.5) -> redis.Redis:
    """Short timeouts: a slow Redis must not stall a request longer than a transform would."""
    return _redis().Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry_on_timeout=False,
    )


class RedisCache:
    def __init__(self, client: redis.Redis, item_max_bytes: int, ttl_seconds: int) -> None:
        self.client = client
        self.item_max = item_max_bytes
        self.ttl = ttl_seconds
        self._throttle = _Throttle()
        self._errors = _redis().RedisError

    def get(self, key: str) -> bytes | None:
        try:
            return self.client.get(REDIS_PREFIX + key)  # type: ignore[return-value]
        except self._errors as exc:
            self._throttle.report("get", exc)
            return None

    def set(self, key: str, data: bytes) -> None:
        if len(data) > self.item_max:
            return  # big items live in the BlobStore only
        try:
            self.client.set(REDIS_PREFIX + key, data, ex=self.ttl)
        except self._errors as exc:
            self._throttle.report("set", exc)

    def delete(self, *keys: str) -> None:
        if not keys:
            return
        try:
            self.client.delete(*(REDIS_PREFIX + k for k in keys))
        except self._errors as exc:
            self._throttle.report("delete", exc)


# --- single-flight locks ----------------------------------------------------------------------
class Locks(Protocol):
    def try_acquire(self, name: str, ttl: float) -> object | None:
        """A handle if acquired, None if someone else holds the lock."""

    def release(self, name: str, handle: object) -> None: ...


class FileLocks:
    """flock(2) on one file per name: shared by every worker process on this machine."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> str:
        digest = hashlib.sha256(name.encode()).hexdigest()[:40]
        return str(self.directory / digest)

    def try_acquire(self, name: str, ttl: float) -> object | None:
        fd = os.open(self._path(name), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def release(self, name: str, handle: object) -> None:
        fd = int(handle)  # type: ignore[call-overload]
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisLocks:
    """SET NX PX with a random token; released only by its owner. Falls back to file locks
    while Redis is unreachable, so single-flight degrades to per-machine, never to failure."""

    def __init__(self, client: redis.Redis, fallback: FileLocks) -> None:
        self.client = client
        self.fallback = fallback
        self._throttle = _Throttle()
        self._errors = _redis().RedisError

    def try_acquire(self, name: str, ttl: float) -> object | None:
        token = secrets.token_hex(16)
        try:
            ok = self.client.set(REDIS_PREFIX + "lock:" + name, token, nx=True, px=int(ttl * 1000))
        except self._errors as exc:
            self._throttle.report("lock", exc)
            handle = self.fallback.try_acquire(name, ttl)
            return None if handle is None else ("file", handle)
        return ("redis", token) if ok else None

    def release(self, name: str, handle: object) -> None:
        kind, value = handle  # type: ignore[misc]
        if kind == "file":
            self.fallback.release(name, value)
            return
        try:
            self.client.eval(_RELEASE_SCRIPT, 1, REDIS_PREFIX + "lock:" + name, value)
        except self._errors as exc:  # it expires by itself
            self._throttle.report("unlock", exc)


@contextmanager
def held(locks: Locks, name: str, ttl: float) -> Iterator[bool]:
    """Yield True while holding the lock, False if another holder has it."""
    handle = locks.try_acquire(name, ttl)
    try:
        yield handle is not None
    finally:
        if handle is not None:
            locks.release(name, handle)
