"""app/cache.py: the size cap on Redis, the in-process LRU's byte budget, and Redis failures
(counted, logged at most once per interval, answered as misses). Redis is the suite's own
server (tests/servers.py), never the machine's."""

from __future__ import annotations

import json
import logging

import redis

from app import create_app, metrics
from app.cache import LOG_INTERVAL_SECONDS, REDIS_PREFIX, MemoryCache, RedisCache, redis_client
from tests import images
from tests.conftest import make_settings
from tests.test_variants_http import upload
from tests.waiting import wait_stored


def lookups(tier: str) -> float:
    return metrics.CACHE_LOOKUPS.labels(tier=tier)._value.get()


def cache_errors(op: str) -> float:
    return metrics.CACHE_ERRORS.labels(op=op)._value.get()


def redis_events(caplog) -> list[dict]:  # type: ignore[no-untyped-def]
    found = []
    for record in caplog.records:
        if record.name == "image_origin" and '"redis_unavailable"' in record.getMessage():
            found.append(json.loads(record.getMessage()))
    return found


# --- the item size cap ----------------------------------------------------------------------
def test_items_over_the_cap_never_reach_redis(redis_url: str) -> None:
    cache = RedisCache(redis_client(redis_url), item_max_bytes=1000, ttl_seconds=60)
    raw = redis.Redis.from_url(redis_url)
    cache.set("variant:at-cap", b"a" * 1000)
    cache.set("variant:over-cap", b"b" * 1001)
    assert raw.get(REDIS_PREFIX + "variant:at-cap") == b"a" * 1000
    assert 0 < raw.ttl(REDIS_PREFIX + "variant:at-cap") <= 60
    assert not raw.exists(REDIS_PREFIX + "variant:over-cap")
    assert cache.get("variant:over-cap") is None
    # a big item replacing a small one under the same key is not written either
    cache.set("variant:at-cap", b"c" * 5000)
    assert raw.get(REDIS_PREFIX + "variant:at-cap") == b"a" * 1000


def test_a_variant_over_the_cap_is_served_from_the_store_not_redis(data_dir, redis_url) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_settings(data_dir, redis_url=redis_url, cache_item_max_bytes=64))
    c = app.test_client()
    doc = upload(c, images.jpeg(600, 400))
    path = f"/{doc['hash']}/webp/high/320"
    first = c.get(path)
    assert first.status_code == 200 and len(first.data) > 64
    assert redis.Redis.from_url(redis_url).keys(REDIS_PREFIX + "variant:*") == []
    wait_stored(app.config["IMAGE_ORIGIN"], doc["hash"])  # stored after the answer
    cache_hits, store_hits = lookups("cache"), lookups("store")
    assert c.get(path).data == first.data
    assert (lookups("cache"), lookups("store")) == (cache_hits, store_hits + 1)
    assert redis.Redis.from_url(redis_url).keys(REDIS_PREFIX + "variant:*") == []


# --- the in-process LRU -----------------------------------------------------------------------
def _held(cache: MemoryCache, keys: str) -> str:
    return "".join(k for k in keys if cache.get(k) is not None)


def test_memory_cache_keeps_within_its_byte_budget_evicting_the_oldest() -> None:
    cache = MemoryCache(budget_bytes=100, item_max_bytes=60)
    for key in "abcd":
        cache.set(key, key.encode() * 30)  # 30 bytes each: four do not fit in 100
    assert _held(cache, "abcd") == "bcd"  # "a", the oldest, went
    assert cache._size == 90
    cache.get("b")  # used: now the newest
    cache.set("e", b"e" * 30)
    assert _held(cache, "bcde") == "bde"  # "c" was the least recently used
    cache.set("f", b"f" * 60)  # one item may push out several
    assert sum(len(cache.get(k) or b"") for k in "bdef") <= 100
    assert cache.get("f") == b"f" * 60 and cache._size <= 100
    # replacing a key counts its new size only
    cache.set("f", b"F" * 10)
    assert cache.get("f") == b"F" * 10 and cache._size == sum(len(v) for v in cache._items.values())


def test_memory_cache_refuses_items_over_the_item_cap_or_the_budget() -> None:
    cache = MemoryCache(budget_bytes=100, item_max_bytes=50)
    cache.set("small", b"s" * 50)
    cache.set("big", b"b" * 51)
    assert cache.get("big") is None and cache.get("small") == b"s" * 50  # nothing evicted for it
    tight = MemoryCache(budget_bytes=40, item_max_bytes=50)
    tight.set("x", b"x" * 45)
    assert tight.get("x") is None and tight._size == 0
    off = MemoryCache(budget_bytes=0, item_max_bytes=50)
    off.set("y", b"y")
    assert off.get("y") is None


# --- Redis failures ---------------------------------------------------------------------------
def test_redis_errors_are_counted_and_logged_once_per_interval(
    redis_url, redis_srv, caplog
) -> None:  # type: ignore[no-untyped-def]
    cache = RedisCache(redis_client(redis_url, timeout=0.2), item_max_bytes=1000, ttl_seconds=60)
    cache.set("variant:k", b"v")
    assert cache.get("variant:k") == b"v"
    before = {op: cache_errors(op) for op in ("get", "set", "delete")}
    redis_srv.stop()
    try:
        with caplog.at_level(logging.DEBUG, logger="image_origin"):
            for _ in range(5):
                assert cache.get("variant:k") is None  # a miss, never an exception
                cache.set("variant:k", b"v")
            cache.delete("variant:k")
            assert cache_errors("get") == before["get"] + 5
            assert cache_errors("set") == before["set"] + 5
            assert cache_errors("delete") == before["delete"] + 1
            logged = redis_events(caplog)
            assert len(logged) == 1, logged  # eleven failures, one line
            assert logged[0]["op"] == "get" and logged[0]["error"]
            # once the interval has passed, the next failure is logged again (once)
            cache._throttle._last -= LOG_INTERVAL_SECONDS
            cache.set("variant:k", b"v")
            cache.set("variant:k", b"v")
            assert [e["op"] for e in redis_events(caplog)] == ["get", "set"]
    finally:
        redis_srv.start()
    assert cache.get("variant:k") is None  # Redis is back (empty: it keeps nothing on disk)
    cache.set("variant:k", b"v")
    assert cache.get("variant:k") == b"v"
