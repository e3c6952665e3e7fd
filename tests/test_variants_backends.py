"""Variants with the real backends: Redis cache and locks, SeaweedFS store, RQ pre-generation,
and single-flight across two gunicorn workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
import requests

from app import create_app
from app.imaging.variants import CONTENT_TYPES
from app.settings import parse_pregenerate
from app.variant_service import variant_storage_key
from tests import images
from tests.conftest import auth, base_env, make_settings
from tests.live import gunicorn
from tests.test_variants_http import transforms, upload

PREGEN = "webp/high/640,jpeg/high/320,avif/low/160"


def test_redis_cache_then_redis_down_still_serves(data_dir, redis_url, redis_srv):
    app = create_app(make_settings(data_dir, redis_url=redis_url))
    c = app.test_client()
    doc = upload(c, images.jpeg(600, 400))
    path = f"/{doc['hash']}/webp/high/320"
    first = c.get(path)
    assert first.status_code == 200
    r = redis.Redis.from_url(redis_url)
    cached = [k for k in r.keys("image-origin:variant:*")]
    assert len(cached) == 1 and r.get(cached[0]) == first.data
    redis_srv.stop()
    try:
        assert c.get(path).data == first.data  # from the stored variant
        fresh = c.get(f"/{doc['hash']}/jpeg/low/160")  # a transform with no lock server
        assert fresh.status_code == 200 and fresh.headers["Content-Type"] == "image/jpeg"
        assert c.get("/readyz").status_code == 503
        assert "redis" in c.get("/readyz").json["error"]["message"]
        up = c.post("/v1/images", data=images.png(20, 20), headers=auth())
        assert up.status_code == 201  # uploads do not need the cache either
    finally:
        redis_srv.start()
    assert c.get("/readyz").status_code == 200


def test_variants_stored_in_s3(data_dir, s3_env, seaweed):
    app = create_app(make_settings(data_dir, **_settings_from_env(s3_env)))
    c = app.test_client()
    doc = upload(c, images.png(500, 300))
    first = c.get(f"/{doc['hash']}/avif/high/320")
    assert first.status_code == 200 and first.headers["Content-Type"] == "image/avif"
    bucket = s3_env["IMAGE_ORIGIN_STORAGE_URL"][5:].split("/")[0]
    names = [o["Key"] for o in seaweed.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(n.startswith("objects/sha256/") for n in names)
    assert any(n.startswith("objects/variants/") and n.endswith("/avif/high/320") for n in names)
    # a second app (no shared memory cache) reads the stored variant without a transform
    before = transforms()
    again = create_app(make_settings(data_dir, **_settings_from_env(s3_env))).test_client()
    assert again.get(f"/{doc['hash']}/avif/high/320").data == first.data
    assert transforms() == before


def _settings_from_env(env: dict[str, str]) -> dict[str, str]:
    return {
        "storage_url": env["IMAGE_ORIGIN_STORAGE_URL"],
        "s3_endpoint_url": env["IMAGE_ORIGIN_S3_ENDPOINT_URL"],
    }


def _assert_pregenerated(settings, digest: str, client) -> None:  # type: ignore[no-untyped-def]
    blobs = create_app(settings).config["IMAGE_ORIGIN"].blobs
    for spec in settings.pregenerate:
        key = variant_storage_key(digest, spec, settings)
        assert blobs.exists(key), key
    before = transforms()
    for spec in settings.pregenerate:
        r = client.get(f"/{digest}/{spec.path}")
        assert r.status_code == 200 and r.headers["Content-Type"] == CONTENT_TYPES[spec.format]
    assert transforms() == before  # the first request did not transform


def test_pregenerated_in_process(data_dir):
    settings = make_settings(data_dir, pregenerate=parse_pregenerate(PREGEN))
    app = create_app(settings)
    c = app.test_client()
    doc = upload(c, images.jpeg(1400, 900))
    assert app.config["IMAGE_ORIGIN"].jobs.wait_idle(60)
    fresh_client = create_app(settings).test_client()  # empty memory cache: must hit the store
    _assert_pregenerated(settings, doc["hash"], fresh_client)


def test_pregeneration_waits_for_a_busy_transform_pool(data_dir):
    """Requests hold every transform slot while the job starts: the job waits its turn instead
    of dropping the variants (the in-process runner has no retries of its own)."""
    settings = make_settings(
        data_dir, pregenerate=parse_pregenerate(PREGEN), transform_concurrency=1
    )
    app = create_app(settings)
    services = app.config["IMAGE_ORIGIN"]
    release = threading.Event()
    holder = services.service.variants.pool.submit(release.wait, 30)  # a long transform in progress
    try:
        doc = upload(app.test_client(), images.jpeg(1400, 900, seed=14))
        time.sleep(1.0)  # the job has found the pool busy at least once by now
        assert not services.jobs.wait_idle(0)
    finally:
        release.set()
        holder.result(timeout=30)
    assert services.jobs.wait_idle(60)
    _assert_pregenerated(settings, doc["hash"], create_app(settings).test_client())


def test_pregenerated_by_rq_worker(data_dir, redis_url):
    settings = make_settings(data_dir, redis_url=redis_url, pregenerate=parse_pregenerate(PREGEN))
    app = create_app(settings)
    c = app.test_client()
    doc = upload(c, images.jpeg(1400, 900, seed=12))
    dup = upload(c, images.jpeg(1400, 900, seed=12))
    assert dup["deduplicated"] is True
    queue_len = redis.Redis.from_url(redis_url).llen("rq:queue:image-origin")
    assert queue_len == 1  # new content only; the duplicate enqueued nothing
    env = {
        **os.environ,
        **base_env(data_dir),
        "IMAGE_ORIGIN_REDIS_URL": redis_url,
        "IMAGE_ORIGIN_PREGENERATE": PREGEN,
    }
    worker = subprocess.run(
        [str(Path(sys.executable).parent / "image-origin"), "worker", "--burst"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert worker.returncode == 0, worker.stderr[-2000:]
    redis.Redis.from_url(redis_url).flushall()  # prove the bytes come from the store
    _assert_pregenerated(settings, doc["hash"], c)


def test_failed_enqueue_never_fails_the_upload(data_dir, redis_url, redis_srv):
    app = create_app(
        make_settings(data_dir, redis_url=redis_url, pregenerate=parse_pregenerate(PREGEN))
    )
    redis_srv.stop()
    try:
        r = app.test_client().post("/v1/images", data=images.jpeg(seed=31), headers=auth())
        assert r.status_code == 201
    finally:
        redis_srv.start()


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_32_concurrent_requests_one_transform_across_two_workers(data_dir, redis_url, s3_env):
    with gunicorn(
        data_dir,
        workers=2,
        threads=16,
        IMAGE_ORIGIN_REDIS_URL=redis_url,
        **s3_env,
    ) as server:
        data = images.jpeg(2000, 1500, seed=99)
        doc = requests.post(f"{server.url}/v1/images", data=data, headers=auth(), timeout=30)
        assert doc.status_code == 201, server.logs()[-2000:]
        digest = doc.json()["hash"]
        url = f"{server.url}/{digest}/webp/high/1280"

        def get(_: int) -> requests.Response:
            return requests.get(url, timeout=60)

        with ThreadPoolExecutor(32) as pool:
            responses = list(pool.map(get, range(32)))
        assert [r.status_code for r in responses] == [200] * 32, server.logs()[-3000:]
        assert len({r.content for r in responses}) == 1
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        made = _metric(text, 'image_origin_transforms_total{format="webp"}')
        assert made == 1, re.findall(r"image_origin_transforms.*", text)
        assert _metric(text, "image_origin_single_flight_waits_total") >= 1
