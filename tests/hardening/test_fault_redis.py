"""Redis stopped and restarted under gunicorn and an RQ worker (``image-origin worker``).

While Redis is down: every read is still served (cache misses fall through to the stored
variant or a transform), single-flight falls back to file locks so 8 concurrent requests for a
new variant across 2 workers still make it once, uploads succeed (the pre-generation enqueue is
dropped, never the upload), /readyz names redis. After Redis is back on the same port: the
cache fills again and the job worker, which was never restarted, runs new jobs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests import images
from tests.conftest import base_env
from tests.hardening.client import Live, eventually
from tests.live import gunicorn
from tests.live import stop as stop_process

PREGEN = "webp/high/160"


def _pregenerated(live: Live, digest: str) -> bool:
    r = live.object(digest)
    return r.status_code == 200 and any(
        v["key"].endswith("/webp/high/160") for v in r.json()["variants"]
    )


def test_redis_outage_and_recovery(data_dir: Path, redis_url: str, redis_srv) -> None:  # type: ignore[no-untyped-def]
    env = {"IMAGE_ORIGIN_REDIS_URL": redis_url, "IMAGE_ORIGIN_PREGENERATE": PREGEN}
    worker_env = {**os.environ, **base_env(data_dir, **env)}
    log = data_dir.parent / "rq-worker.log"
    script = Path(sys.executable).parent / "image-origin"
    with gunicorn(data_dir, workers=2, threads=4, **env) as server, open(log, "wb") as out:
        worker = subprocess.Popen(
            [str(script), "worker"], env=worker_env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            live = Live(server.url)
            first = live.upload(images.jpeg(500, 300, seed=401)).json()["hash"]
            eventually(lambda: _pregenerated(live, first), 60, "pre-generation by the worker")
            warm = live.get(f"/{first}/jpeg/low/320")
            assert warm.status_code == 200

            redis_srv.stop()
            try:
                assert live.get(f"/{first}/jpeg/low/320").content == warm.content
                assert live.get(f"/{first}/webp/high/160").status_code == 200
                before = live.metric("image_origin_transforms_total")
                path = f"/{first}/avif/low/480"
                with ThreadPoolExecutor(8) as pool:
                    answers = list(pool.map(lambda _: live.get(path), range(8)))
                assert [a.status_code for a in answers] == [200] * 8
                assert len({a.content for a in answers}) == 1
                # one transform for eight requests: the file-lock fallback held across workers
                assert live.metric("image_origin_transforms_total") - before == 1
                during = live.upload(images.png(80, 60, seed=402))
                assert during.status_code == 201  # the enqueue failed, the upload did not
                ready = live.get("/readyz")
                assert ready.status_code == 503 and "redis" in ready.json()["error"]["message"]
            finally:
                redis_srv.start()  # same port, empty (no persistence)

            eventually(lambda: live.get("/readyz").status_code == 200, 30, "ready again")
            assert live.get(f"/{first}/jpeg/low/320").content == warm.content
            after = live.upload(images.gif(40, 40, seed=403)).json()["hash"]
            # the worker reconnects on its own (RQ backs off up to 60 s between attempts)
            eventually(lambda: _pregenerated(live, after), 120, "jobs resumed after the outage")
            assert worker.poll() is None, log.read_text()[-3000:]
        finally:
            stop_process(worker)
        logs = server.logs()
    assert "Traceback" not in logs, logs[-3000:]
