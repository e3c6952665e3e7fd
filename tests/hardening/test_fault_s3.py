"""S3 stopped and restarted under a running gunicorn (Redis as the variant cache).

While S3 is down: new content is refused with 503 ``storage_unavailable`` and leaves no row and
no reference; variants already in Redis are still served; reads that need S3 answer 503, never
500; /readyz names storage. After S3 comes back on the same endpoint, everything works again
without restarting image-origin, and every original is still there and intact.

This test runs its own SeaweedFS (the session's is shared and must stay up).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from tests import images, servers
from tests.hardening.client import Live, eventually
from tests.hardening.conftest import assert_json_error
from tests.live import gunicorn
from tests.test_upload_api import staging_files

OUTAGE_ANSWER_SECONDS = 45  # botocore retries a refused connection (5 attempts, backoff)


def test_s3_outage_and_recovery(data_dir: Path, redis_url: str) -> None:
    with servers.seaweedfs() as s3:
        bucket = s3.create_bucket("fault-s3")
        env = {
            "IMAGE_ORIGIN_STORAGE_URL": f"s3://{bucket}/objects",
            "IMAGE_ORIGIN_S3_ENDPOINT_URL": s3.endpoint_url,
            "IMAGE_ORIGIN_REDIS_URL": redis_url,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        }
        with gunicorn(data_dir, workers=2, threads=4, **env) as server:
            live = Live(server.url, timeout=90)
            before = images.jpeg(400, 300, seed=301)
            doc = live.upload(before).json()
            digest = doc["hash"]
            cached = live.get(f"/{digest}/webp/high/160")
            assert cached.status_code == 200
            assert live.get("/readyz").status_code == 200

            s3.stop(grace=0)  # abrupt: connections refused from now on

            # new content: refused cleanly, nothing recorded
            new = images.png(64, 64, seed=302)
            new_digest = hashlib.sha256(new).hexdigest()
            started = time.monotonic()
            refused = live.upload(new)
            assert time.monotonic() - started < OUTAGE_ANSWER_SECONDS
            assert assert_json_error(refused, {503}) == "storage_unavailable"
            assert refused.headers.get("Retry-After")
            assert live.object(new_digest).status_code == 404
            assert new_digest not in {r["hash"] for r in live.references("alice-key-0123456789")}
            # content already stored only gains a reference (no byte needs writing)
            again = live.upload(before)
            assert again.status_code == 201 and again.json()["deduplicated"] is True
            # serving from Redis continues; reads that need S3 are 503, never 500
            assert live.get(f"/{digest}/webp/high/160").content == cached.content
            for path in (f"/{digest}/original", f"/{digest}/jpeg/low/160"):
                r = live.get(path)
                assert assert_json_error(r, {503}) == "storage_unavailable", path
            ready = live.get("/readyz")
            assert ready.status_code == 503 and "storage" in ready.json()["error"]["message"]

            s3.restart()  # same endpoint, same data; image-origin is not restarted

            eventually(lambda: live.get("/readyz").status_code == 200, 30, "ready again")
            stored = live.upload(new)
            assert stored.status_code == 201 and stored.json()["deduplicated"] is False
            assert live.original_ok(digest) and live.original_ok(new_digest)
            assert live.get(f"/{digest}/jpeg/low/160").status_code == 200
            assert live.get(f"/{new_digest}/webp/low/160").status_code == 200
            assert live.object(digest).json()["ref_count"] == 2
            logs = server.logs()
        assert "Traceback" not in logs, logs[-3000:]
        assert staging_files(data_dir) == []
