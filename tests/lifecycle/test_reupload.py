"""5. Re-upload after GC stores the bytes again: no stale "exists" knowledge survives GC, in
Redis (cache and locks, with SeaweedFS as the S3 store) or in the serving process's memory.

GC runs from separate services, as ``image-origin gc`` would from another process, while the
app that serves and takes the re-upload keeps its own in-process state."""

from __future__ import annotations

import pytest
import redis

from app import create_app
from app.container import build_services
from app.jobs.gc import run_gc
from app.storage import keys
from tests.conftest import auth, make_settings
from tests.lifecycle.conftest import content, wait_stored


def _cycle(settings, redis_url: str | None = None) -> None:
    app = create_app(settings)
    client = app.test_client()
    services = app.config["IMAGE_ORIGIN"]
    data = content(42, size=96)
    doc = client.post("/v1/images", data=data, headers=auth()).json
    digest = doc["hash"]
    assert doc["deduplicated"] is False
    variant = client.get(f"/{digest}/webp/high/160")
    assert variant.status_code == 200
    assert client.get(f"/{digest}/original").data == data  # warm every tier
    stored_key = wait_stored(services, digest)
    assert services.cache.get(stored_key) is not None
    client.delete(f"/v1/images/{doc['id']}", headers=auth())

    ops = build_services(settings, jobs="none")  # "another process"
    try:
        assert run_gc(ops, grace=0, confirm=True).collected == 1
    finally:
        ops.close()
    assert not services.blobs.exists(keys.original_key(digest))
    assert not services.blobs.exists(stored_key)
    if redis_url:
        r = redis.Redis.from_url(redis_url)
        assert r.keys("image-origin:variant:*") == []  # GC removed the cached variants
    assert client.get(f"/{digest}/original").status_code == 404

    again = client.post("/v1/images", data=data, headers=auth())
    assert again.status_code == 201
    assert again.json["deduplicated"] is False and again.json["ref_count"] == 1
    assert services.blobs.get_bytes(keys.original_key(digest)) == data
    assert client.get(f"/{digest}/original").data == data
    fresh = client.get(f"/{digest}/webp/high/160")
    assert fresh.status_code == 200 and fresh.data == variant.data
    app.config["IMAGE_ORIGIN"].close()


def test_reupload_after_gc_in_process_cache_and_local_disk(data_dir):
    _cycle(make_settings(data_dir))


@pytest.mark.usefixtures("seaweed")
def test_reupload_after_gc_with_redis_and_s3(data_dir, redis_url, s3_env):
    settings = make_settings(
        data_dir,
        redis_url=redis_url,
        storage_url=s3_env["IMAGE_ORIGIN_STORAGE_URL"],
        s3_endpoint_url=s3_env["IMAGE_ORIGIN_S3_ENDPOINT_URL"],
    )
    _cycle(settings, redis_url)
