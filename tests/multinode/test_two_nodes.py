"""Two nodes: two real gunicorn instances on different ports sharing one PostgreSQL, one Redis
and one SeaweedFS (S3), as behind a load balancer. Each node has its own data dir (staging,
local locks), so anything they share goes through the shared services.

The cluster is started once for the module (both nodes at the same time, so their workers
migrate the shared database together); tests use distinct content and owners, and never depend
on each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
import requests

from tests import images, servers
from tests.conftest import ADMIN, ALICE, BOB, auth, base_env
from tests.live import ROOT, LiveServer, gunicorn
from tests.metadata.conftest import fresh_database

GC_TIMEOUT = 180


@dataclass
class Cluster:
    a: LiveServer
    b: LiveServer
    env: dict[str, str]  # the settings both nodes share
    db_url: str
    bucket: str
    seaweed: servers.SeaweedFS
    redis_url: str

    def cli(self, node: LiveServer, *args: str, timeout: float = GC_TIMEOUT) -> subprocess.Popen:
        """Start ``image-origin ARGS`` with ``node``'s settings (as an operator on that node)."""
        env = {**os.environ, **base_env(node.data_dir, **self.env)}
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "image-origin"), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def original_keys(self, digest: str) -> list[str]:
        prefix = f"objects/sha256/{digest[:2]}/{digest[2:4]}/{digest}"
        listed = self.seaweed.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for o in listed.get("Contents", ())]


@pytest.fixture(scope="module")
def cluster(pg_server, redis_srv, seaweed, tmp_path_factory) -> Iterator[Cluster]:  # type: ignore[no-untyped-def]
    redis_srv.start()
    redis.Redis.from_url(redis_srv.url).flushall()
    bucket = seaweed.create_bucket(f"nodes-{uuid.uuid4().hex[:16]}")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", seaweed.access_key)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    root = tmp_path_factory.mktemp("nodes")
    try:
        with fresh_database(pg_server) as db_url, contextlib.ExitStack() as stack:
            env = {
                "IMAGE_ORIGIN_DATABASE_URL": db_url,
                "IMAGE_ORIGIN_REDIS_URL": redis_srv.url,
                "IMAGE_ORIGIN_STORAGE_URL": f"s3://{bucket}/objects",
                "IMAGE_ORIGIN_S3_ENDPOINT_URL": seaweed.endpoint_url,
            }
            managers = []
            for name in ("a", "b"):
                (root / name).mkdir()
                managers.append(gunicorn(root / name, workers=2, threads=4, **env))
            # Start both at once: four workers migrating one empty database together.
            with ThreadPoolExecutor(2) as pool:
                started = [pool.submit(m.__enter__) for m in managers]
                for manager, future in zip(managers, started, strict=True):
                    with contextlib.suppress(Exception):
                        future.result()
                        stack.push(manager.__exit__)
            a, b = (f.result() for f in started)  # re-raises a failed start
            yield Cluster(a, b, env, db_url, bucket, seaweed, redis_srv.url)
    finally:
        seaweed.delete_bucket(bucket)


def metric(node: LiveServer, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` (matching ``labels``) over every worker of the node."""
    text = requests.get(f"{node.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) == name:
            if all(f'{k}="{v}"' in (m.group(2) or "") for k, v in labels.items()):
                total += float(m.group(3))
    return total


def upload(node: LiveServer, data: bytes, key: str, **params: str) -> requests.Response:
    return requests.post(
        f"{node.url}/v1/images", data=data, params=params, headers=auth(key), timeout=120
    )


def get_object(node: LiveServer, digest: str) -> dict:
    r = requests.get(f"{node.url}/v1/objects/{digest}", headers=auth(ADMIN), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


# --- the tests ---------------------------------------------------------------------------------
def test_both_nodes_ready_on_one_migrated_database(cluster):
    from app.metadata.postgres_migrations import names

    for node in (cluster.a, cluster.b):
        r = requests.get(f"{node.url}/readyz", timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["checks"] == {"database": True, "storage": True, "redis": True}
    with psycopg.connect(cluster.db_url) as conn:
        applied = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert applied == sorted(names())  # once each, although four workers migrated together


def test_concurrent_identical_uploads_split_across_both_nodes(cluster):
    data = images.jpeg(320, 240, seed=91_001)
    digest = hashlib.sha256(data).hexdigest()
    nodes = (cluster.a, cluster.b)
    start = threading.Barrier(40)

    def send(i: int) -> requests.Response:
        start.wait()
        return upload(nodes[i % 2], data, BOB)

    with ThreadPoolExecutor(40) as pool:
        responses = list(pool.map(send, range(40)))
    assert [r.status_code for r in responses] == [201] * 40, responses[0].text
    docs = [r.json() for r in responses]
    assert {d["hash"] for d in docs} == {digest}
    assert sum(not d["deduplicated"] for d in docs) == 1  # written once, by one node
    assert len({d["id"] for d in docs}) == 40
    for node in nodes:
        assert get_object(node, digest)["ref_count"] == 40
    assert len(cluster.original_keys(digest)) == 1
    listed, cursor = [], None
    while True:  # each node lists what both made, newest first
        params = {"limit": "15", **({"cursor": cursor} if cursor else {})}
        page = requests.get(
            f"{cluster.b.url}/v1/images", params=params, headers=auth(BOB), timeout=10
        ).json()
        listed += [d["id"] for d in page["items"] if d["hash"] == digest]
        if (cursor := page["next_cursor"]) is None:
            break
    assert sorted(listed) == sorted(d["id"] for d in docs)
    # Deleting on one node is seen by the other at once.
    victim = docs[0]["id"]
    assert requests.delete(f"{cluster.b.url}/v1/images/{victim}", headers=auth(BOB)).ok
    assert requests.get(f"{cluster.a.url}/v1/images/{victim}", headers=auth(BOB)).status_code == 404
    assert get_object(cluster.a, digest)["ref_count"] == 39


def test_variant_made_on_a_is_served_by_b_without_a_transform(cluster):
    doc = upload(cluster.a, images.jpeg(900, 600, seed=91_002), key=ALICE).json()
    path = f"/{doc['hash']}/webp/high/320"
    made_on_a = metric(cluster.a, "image_origin_transforms_total")
    made_on_b = metric(cluster.b, "image_origin_transforms_total")
    first = requests.get(cluster.a.url + path, timeout=60)
    assert first.status_code == 200 and first.headers["Content-Type"] == "image/webp"
    assert metric(cluster.a, "image_origin_transforms_total") == made_on_a + 1

    from_cache = requests.get(cluster.b.url + path, timeout=60)  # shared Redis
    assert from_cache.status_code == 200 and from_cache.content == first.content
    assert from_cache.headers["ETag"] == first.headers["ETag"]

    # A stores the variant (S3 and its row) right after answering; then, with Redis emptied,
    # B finds it in the shared store instead of making it again.
    servers.wait_for(
        lambda: get_object(cluster.b, doc["hash"])["variants"], timeout=20, what="variant row"
    )
    redis.Redis.from_url(cluster.redis_url).flushall()
    stored_reads = metric(cluster.b, "image_origin_variant_lookups_total", tier="store")
    from_store = requests.get(cluster.b.url + path, timeout=60)
    assert from_store.status_code == 200 and from_store.content == first.content
    assert metric(cluster.b, "image_origin_variant_lookups_total", tier="store") > stored_reads
    assert metric(cluster.b, "image_origin_transforms_total") == made_on_b


def test_signed_url_minted_on_a_works_on_b(cluster):
    doc = upload(cluster.a, images.jpeg(400, 300, seed=91_003), ALICE, private="true")
    assert doc.status_code == 201
    doc = doc.json()
    minted = requests.post(
        f"{cluster.a.url}/v1/images/{doc['id']}/signed-url",
        json={"format": "webp", "quality": "high", "width": 320, "expires_in": 300},
        headers=auth(),
        timeout=10,
    )
    assert minted.status_code == 200, minted.text
    signed = urlsplit(minted.json()["url"]).path
    assert requests.get(f"{cluster.b.url}/{doc['hash']}/webp/high/320").status_code == 403
    on_b = requests.get(cluster.b.url + signed, timeout=60)
    assert on_b.status_code == 200 and on_b.headers["Content-Type"] == "image/webp"
    tampered = signed.replace("/320", "/640")
    assert requests.get(cluster.b.url + tampered, timeout=10).status_code == 403
    original = requests.post(
        f"{cluster.a.url}/v1/images/{doc['id']}/signed-url",
        json={"format": "original", "expires_in": 300},
        headers=auth(),
        timeout=10,
    ).json()["url"]
    data = requests.get(cluster.b.url + urlsplit(original).path, timeout=60)
    assert data.status_code == 200 and hashlib.sha256(data.content).hexdigest() == doc["hash"]


def test_gc_on_a_while_b_uploads_the_same_content_loses_nothing(cluster):
    """Content deleted on A is collected by ``image-origin gc`` run on A, while node B uploads
    the same bytes again. Whatever the interleaving, every upload B answered 201 for is served
    intact by both nodes afterwards, counted right, and present in S3; content nobody uploaded
    again is collected."""
    key = ALICE
    racers = [images.jpeg(96, 64, seed=92_000 + i) for i in range(40)]
    bystanders = [images.jpeg(96, 64, seed=93_000 + i) for i in range(20)]
    for data in racers + bystanders:
        doc = upload(cluster.a, data, key).json()
        assert requests.delete(f"{cluster.a.url}/v1/images/{doc['id']}", headers=auth()).ok

    gc = cluster.cli(cluster.a, "gc", "--grace", "0", "--yes")
    try:
        # Start uploading on B once A's collector has begun (claimed or removed something).
        def collecting() -> bool:
            if gc.poll() is not None:
                return True
            with psycopg.connect(cluster.db_url) as conn:
                (n,) = conn.execute(
                    "SELECT COUNT(*) FROM objects WHERE gc_token IS NOT NULL"
                ).fetchone()
                (left,) = conn.execute(
                    "SELECT COUNT(*) FROM objects WHERE ref_count = 0"
                ).fetchone()
            return n > 0 or left < len(racers) + len(bystanders)

        servers.wait_for(collecting, timeout=60, interval=0.01, what="gc start")
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda d: upload(cluster.b, d, key), racers))
        output, _ = gc.communicate(timeout=GC_TIMEOUT)
    finally:
        if gc.poll() is None:
            gc.kill()
    assert gc.returncode == 0, output
    assert [r.status_code for r in answers] == [201] * len(racers), answers[0].text

    for data, answer in zip(racers, answers, strict=True):
        digest = hashlib.sha256(data).hexdigest()
        assert answer.json()["hash"] == digest
        for node in (cluster.a, cluster.b):
            got = requests.get(f"{node.url}/{digest}/original", timeout=60)
            assert got.status_code == 200 and got.content == data, (digest, got.status_code)
        obj = get_object(cluster.a, digest)
        assert obj["ref_count"] == 1 and obj["blob_missing_at"] is None, obj
        assert len(cluster.original_keys(digest)) == 1
    for data in bystanders:
        digest = hashlib.sha256(data).hexdigest()
        assert requests.get(f"{cluster.b.url}/{digest}/original", timeout=10).status_code == 404
        assert cluster.original_keys(digest) == []
    rewritten = sum(not r.json()["deduplicated"] for r in answers)
    print(f"{rewritten} of {len(racers)} re-uploads wrote the blob again; gc: {output}")

    verify = cluster.cli(cluster.b, "verify")
    out, _ = verify.communicate(timeout=GC_TIMEOUT)
    assert verify.returncode == 0, out  # every original of the shared store is intact


def test_gc_runs_on_both_nodes_at_once_collect_each_object_once(cluster):
    key = ALICE
    contents = [images.png(24, 24, seed=94_000 + i) for i in range(30)]
    for data in contents:
        doc = upload(cluster.b, data, key).json()
        assert requests.delete(f"{cluster.b.url}/v1/images/{doc['id']}", headers=auth()).ok
    runs = [cluster.cli(node, "gc", "--grace", "0", "--yes") for node in (cluster.a, cluster.b)]
    outputs = [run.communicate(timeout=GC_TIMEOUT)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    for data in contents:
        digest = hashlib.sha256(data).hexdigest()
        assert requests.get(f"{cluster.a.url}/{digest}/original", timeout=10).status_code == 404
        assert cluster.original_keys(digest) == []
