"""/metrics, /readyz and the access log of a real gunicorn running config/gunicorn.conf.py.

Proves: /metrics sums every worker (prometheus-client multiprocess mode: requests answered by two
different worker pids are all counted, whichever worker answers the scrape); request metrics are
labelled by route template, never by raw path; upload, dedup, transform and cache counters move;
the job queue depth is exported (RQ on a real Redis); /readyz names Redis when it is down; access
log lines are JSON carrying the X-Request-ID the client saw, with signed tokens redacted.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import auth
from tests.live import LiveServer, gunicorn
from tests.ops.conftest import sample_jpeg, upload_via

ROUTES = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/admin/",
    "/admin/static/<path:filename>",
    "/v1/config",
    "/v1/images",
    "/v1/images/<ref_id>",
    "/v1/images/<ref_id>/restore",
    "/v1/images/<ref_id>/signed-url",
    "/v1/objects",
    "/v1/objects/<digest>",
    "/<sha256:digest>/original",
    "/<sha256:digest>/<fmt>/<quality>",
    "/<sha256:digest>/<fmt>/<quality>/<width>",
    "/s/<token>/<sha256:digest>/original",
    "/s/<token>/<sha256:digest>/<fmt>/<quality>",
    "/s/<token>/<sha256:digest>/<fmt>/<quality>/<width>",
    "unmatched",
}


def scrape(server: LiveServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = requests.get(f"{server.url}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        v
        for (n, lab), v in samples.items()
        if n == name and all((k, val) in lab for k, val in labels.items())
    )


def access_lines(server: LiveServer) -> list[dict]:
    lines = []
    for line in server.logs().splitlines():
        if line.startswith('{"ts"'):
            record = json.loads(line)
            if record.get("event") == "request":
                lines.append(record)
    return lines


def test_metrics_aggregate_every_worker(live: LiveServer) -> None:
    """Requests land on both workers; every scrape, whichever worker answers, counts them all."""
    base = scrape(live)  # the start-up wait polled /healthz too
    base_count = value(base, "image_origin_requests_total", route="/healthz", status="200")
    base_hist = value(base, "image_origin_request_seconds_count", route="/healthz")
    sent = 0
    deadline = time.monotonic() + 60

    def hit(i: int) -> int:
        r = requests.get(f"{live.url}/healthz", headers={"X-Request-ID": f"agg-{i:05d}"})
        return r.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        while True:
            assert all(code == 200 for code in pool.map(hit, range(sent, sent + 40)))
            sent += 40
            time.sleep(0.2)  # let the access log lines land
            pids = {r["pid"] for r in access_lines(live) if r["request_id"].startswith("agg-")}
            if len(pids) >= 2 or time.monotonic() > deadline:
                break
    assert len(pids) >= 2, "all requests went to one worker: cannot prove aggregation"
    for _ in range(6):  # new connections: the scrapes are answered by either worker
        samples = scrape(live)
        total = value(samples, "image_origin_requests_total", route="/healthz", status="200")
        assert total == base_count + sent
        latency = value(samples, "image_origin_request_seconds_count", route="/healthz")
        assert latency == base_hist + sent


def test_counts_survive_worker_recycling(tmp_path: Path) -> None:
    """Workers restarted by max_requests leave their samples behind: nothing is lost."""
    d = tmp_path / "data"
    d.mkdir()
    with gunicorn(d, workers=2, threads=2, GUNICORN_MAX_REQUESTS="10") as server:
        base = value(scrape(server), "image_origin_requests_total", route="/healthz")
        for _ in range(60):
            assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
        pids = {r["pid"] for r in access_lines(server)}
        assert len(pids) >= 4, f"workers were not recycled: {pids}"
        for _ in range(3):
            samples = scrape(server)
            assert value(samples, "image_origin_requests_total", route="/healthz") == base + 60


def test_route_labels_are_templates_never_raw_paths(live: LiveServer) -> None:
    digest = "ab" * 32
    for path in (
        f"/{digest}/original",
        f"/{digest}/webp/high/320",
        f"/{digest}/jpeg/low",
        "/s/123.abcdefghijklmnopqrstuvwxyz/" + digest + "/original",
        "/no/such/route/at/all/here",
        "/favicon.ico",
    ):
        requests.get(live.url + path, timeout=10)
    samples = scrape(live)
    routes = {dict(lab)["route"] for (n, lab) in samples if n == "image_origin_requests_total"}
    assert routes <= ROUTES, routes - ROUTES
    assert {
        "/<sha256:digest>/original",
        "/<sha256:digest>/<fmt>/<quality>/<width>",
        "unmatched",
    } <= routes
    assert value(samples, "image_origin_requests_total", route="unmatched", status="404") >= 1
    forbidden = value(
        samples, "image_origin_requests_total", route="/s/<token>/<sha256:digest>/original"
    )
    assert forbidden >= 1  # a bad signature is counted under its route, as a 403
    assert not any(digest in str(lab) for (_, lab) in samples)


def test_content_counters_move(live: LiveServer) -> None:
    data = sample_jpeg(seed=31)
    before = scrape(live)
    doc = upload_via(live.url, data)
    upload_via(live.url, data)  # the same bytes again: a dedup hit
    for _ in range(3):
        r = requests.get(f"{live.url}/{doc['hash']}/webp/high/160", timeout=30)
        assert r.status_code == 200
    after = scrape(live)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("image_origin_uploads_total", deduplicated="false") == 1
    assert delta("image_origin_uploads_total", deduplicated="true") == 1
    assert delta("image_origin_ingested_bytes_total") == len(data)
    assert delta("image_origin_transforms_total", format="webp") == 1
    assert delta("image_origin_transform_seconds_count", format="webp") == 1
    assert delta("image_origin_variant_lookups_total") >= 2  # later GETs: cache or store
    assert delta("image_origin_requests_total", route="/v1/images", method="POST") == 2
    for name in (
        "image_origin_integrity_failures_total",
        "image_origin_single_flight_waits_total",
        "image_origin_access_writes_total",
        "image_origin_job_queue_depth",
    ):
        assert any(n == name for (n, _) in after), name


@pytest.fixture
def redis_live(tmp_path: Path, redis_url: str) -> Iterator[LiveServer]:
    d = tmp_path / "data"
    d.mkdir()
    with gunicorn(
        d,
        workers=2,
        IMAGE_ORIGIN_REDIS_URL=redis_url,
        IMAGE_ORIGIN_PREGENERATE="webp/high/640",
    ) as server:
        yield server


def test_job_queue_depth_and_readiness_with_redis(redis_live: LiveServer, redis_srv) -> None:  # type: ignore[no-untyped-def]
    assert requests.get(f"{redis_live.url}/readyz", timeout=10).json()["checks"] == {
        "database": True,
        "storage": True,
        "redis": True,
    }
    upload_via(redis_live.url, sample_jpeg(seed=41))
    upload_via(redis_live.url, sample_jpeg(seed=42))
    # No `image-origin worker` runs here, so the two pre-generation jobs wait in RQ.
    assert value(scrape(redis_live), "image_origin_job_queue_depth") == 2
    redis_srv.stop()
    try:
        r = requests.get(f"{redis_live.url}/readyz", timeout=10)
        assert r.status_code == 503
        body = r.json()
        assert body["checks"]["redis"] is False and body["checks"]["database"] is True
        assert body["error"]["code"] == "not_ready" and "redis" in body["error"]["message"]
        assert requests.get(f"{redis_live.url}/metrics", timeout=10).status_code == 200
    finally:
        redis_srv.start()
    assert requests.get(f"{redis_live.url}/readyz", timeout=10).status_code == 200


def test_access_log_is_json_with_the_request_id(live: LiveServer) -> None:
    kept = requests.get(f"{live.url}/v1/config", headers={"X-Request-ID": "edge-abc.123"})
    assert kept.headers["X-Request-ID"] == "edge-abc.123"
    for insane in ('bad "id" {}', "x" * 200):
        replaced = requests.get(f"{live.url}/v1/config", headers={"X-Request-ID": insane})
        new_id = replaced.headers["X-Request-ID"]
        assert new_id != insane and len(new_id) == 32
    generated = requests.get(f"{live.url}/healthz").headers["X-Request-ID"]
    doc = upload_via(live.url, sample_jpeg(seed=51))
    signed = requests.post(
        f"{live.url}/v1/images/{doc['id']}/signed-url",
        json={"format": "original", "expires_in": 60},
        headers=auth(),
        timeout=10,
    ).json()["url"]
    token = signed.split("/s/")[1].split("/")[0]
    # /%73/... routes as /s/...: refused (the signature covers the exact raw path), and its
    # token must not be logged either. Sent raw: requests would unescape it.
    raw = http.client.HTTPConnection(*live.url.removeprefix("http://").split(":"), timeout=10)
    raw.request(
        "GET",
        urlsplit(signed).path.replace("/s/", "/%73/", 1),
        headers={"User-Agent": "encoded prefix"},
    )
    assert raw.getresponse().status == 403
    raw.close()
    assert requests.get(signed, headers={"User-Agent": 'quote " and \\ backslash'}).ok
    deadline = time.monotonic() + 15  # access lines are written after the response
    while True:
        lines = access_lines(live)
        if any(r["ua"] == 'quote " and \\ backslash' for r in lines):
            break
        assert time.monotonic() < deadline, "access log line of the last request never came"
        time.sleep(0.05)
    by_id = {r["request_id"]: r for r in lines}
    assert by_id["edge-abc.123"]["path"] == "/v1/config"
    assert by_id["edge-abc.123"]["status"] == 200 and by_id["edge-abc.123"]["method"] == "GET"
    assert new_id in by_id and generated in by_id
    line = next(r for r in lines if r["ua"] == 'quote " and \\ backslash')
    assert line["path"] == f"/s/-/{doc['hash']}/original"
    line = next(r for r in lines if r["ua"] == "encoded prefix")
    assert line["path"] == f"/%73/-/{doc['hash']}/original"
    assert token not in live.logs()
    assert all(isinstance(r["duration_ms"], float) and r["pid"] > 0 for r in lines)
