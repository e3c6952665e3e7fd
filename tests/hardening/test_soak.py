"""Soak: a mixed workload against gunicorn + Redis + SeaweedFS + an RQ worker, with gc,
reconcile and tier running alongside from the CLI; then nothing may be lost.

Workload (loopback only, bounded in time and count): uploads from a small pool of images (so
most are duplicates, from two owners, some private), variant GETs with a skewed choice (a few
popular variants, a long tail: a realistic hit ratio), deletes, restores, signed URLs, listings.
Meanwhile ``image-origin gc --grace 0 --yes``, ``reconcile`` and ``tier --after-days 0`` run in a
loop. At the end:

- zero 5xx answers, every lifecycle run exited 0;
- the live references the server lists are exactly the ones the clients created and did not
  delete; every live reference's original is fetched and checked against its hash;
- a sample of variants is fetched and compared with a fresh render of the same spec (renders are
  deterministic: same source, spec and settings, same bytes);
- every object's ref_count equals its live references; ``image-origin verify`` passes;
- no gunicorn worker's RSS passes HARDENING_RSS_MIB, nor grows in the second half of the run
  past the first half's peak (plus slack);
- the variant cache answers at least MIN_HIT_RATIO of the variant lookups (cache hits over
  cache + stored-variant + new-transform answers; about 0.9 is what the default run gives here).

SOAK_SECONDS (default 120) sets the workload's duration; the test's own timeout is that plus
TIMEOUT_MARGIN_SECONDS (servers, settling, checks, verify: about 90 s here), not the suite's 300 s.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from PIL import Image

from app.imaging.pipeline import render
from app.settings import VariantSpec, load
from tests import images
from tests.conftest import ALICE, BOB, auth, base_env
from tests.hardening import procs
from tests.hardening.client import Live, eventually
from tests.imaging.samples import animated_gif
from tests.live import gunicorn
from tests.live import stop as stop_process

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
TIMEOUT_MARGIN_SECONDS = 300
# The pool is small (37 images x 12 variants), so after the first pass nearly every lookup is a
# cache hit: 0.9 in a default run here (about 3,800 hits, 400 transforms). The bound leaves room
# for a machine half as fast (fewer lookups over the same distinct variants).
MIN_HIT_RATIO = 0.75
RSS_MIB = int(os.environ.get("HARDENING_RSS_MIB", "1024"))
CLIENTS = 4
MAX_OPS_PER_CLIENT = 50_000
LIFECYCLE = (
    ("gc", "--grace", "0", "--yes"),
    ("reconcile",),
    ("tier", "--after-days", "0"),
)
# A few popular variants and a long tail (weights): most GETs hit the cache.
VARIANTS = [
    ("webp/high/320", 30), ("webp/high/640", 20), ("jpeg/high/320", 15), ("avif/high/320", 10),
    ("jpeg/low/160", 5), ("webp/low/160", 5), ("jpeg/high", 3), ("webp/high/480", 3),
    ("avif/low/640", 3), ("jpeg/low/960", 2), ("auto/high/640", 2), ("original", 2),
]  # fmt: skip


def _pool() -> list[bytes]:
    pool = []
    for seed in range(12):
        pool.append(images.jpeg(200 + 40 * seed, 150 + 30 * seed, seed=1000 + seed))
        pool.append(images.png(120 + 20 * seed, 90 + 10 * seed, seed=2000 + seed))
    for seed in range(6):
        pool.append(images.webp(160 + 30 * seed, 120, seed=3000 + seed))
        pool.append(images.gif(64, 48, seed=4000 + seed))
    pool.append(animated_gif(frames=4))
    return pool


@dataclass
class Ref:
    id: str
    hash: str
    owner_key: str
    private: bool


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    live: dict[str, Ref] = field(default_factory=dict)  # id -> ref, for every client

    def record(self, op: str, r: requests.Response | Exception, allowed: set[int]) -> bool:
        with self.lock:
            if isinstance(r, Exception):
                self.errors.append(f"{op}: {type(r).__name__}: {r}")
                return False
            self.statuses[(op, r.status_code)] += 1
            if r.status_code >= 500 or r.status_code not in allowed:
                self.errors.append(f"{op}: {r.status_code} {r.text[:200]}")
                return False
            return True


def _cli_available() -> None:
    script = Path(sys.executable).parent / "image-origin"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    missing = [cmd[0] for cmd in LIFECYCLE if f"  {cmd[0]} " not in out.stdout]
    if missing:
        pytest.fail(
            f"pending: `image-origin {' / '.join(missing)}` not available yet (the lifecycle "
            "issue adds them); the soak runs them alongside the workload",
            pytrace=False,
        )


class Client(threading.Thread):
    def __init__(self, index: int, live: Live, tally: Tally, pool: list[bytes], deadline: float):
        super().__init__(name=f"soak-{index}", daemon=True)
        self.rnd = random.Random(index)
        self.live = Live(live.url, timeout=60)
        self.tally = tally
        self.pool = pool
        self.deadline = deadline
        self.key = ALICE if index % 2 == 0 else BOB
        self.mine: list[Ref] = []
        self.deleted: list[Ref] = []
        self.ops = 0

    def run(self) -> None:
        choices = [
            (self.upload, 25), (self.get_variant, 50), (self.delete, 8), (self.restore, 5),
            (self.signed, 6), (self.listing, 3), (self.original, 3),
        ]  # fmt: skip
        ops, weights = zip(*choices, strict=True)
        while time.monotonic() < self.deadline and self.ops < MAX_OPS_PER_CLIENT:
            self.ops += 1
            try:
                self.rnd.choices(ops, weights)[0]()
            except requests.RequestException as exc:
                self.tally.record("request", exc, set())

    def upload(self) -> None:
        private = self.rnd.random() < 0.1
        data = self.rnd.choice(self.pool)
        r = self.live.upload(data, key=self.key, private=private)
        if self.tally.record("upload", r, {201}):
            doc = r.json()
            ref = Ref(doc["id"], doc["hash"], self.key, private)
            self.mine.append(ref)
            with self.tally.lock:
                self.tally.live[ref.id] = ref

    def _pick(self) -> Ref | None:
        with self.tally.lock:
            if not self.tally.live:
                return None
            return self.rnd.choice(list(self.tally.live.values()))

    def get_variant(self) -> None:
        ref = self._pick()
        if ref is None:
            return
        variant = self.rnd.choices([v for v, _ in VARIANTS], [w for _, w in VARIANTS])[0]
        if ref.private:
            self._signed_get(ref, variant, mine=False)
            return
        r = self.live.get(f"/{ref.hash}/{variant}", headers={"Accept": "image/avif,image/webp"})
        # another client may have deleted the last reference meanwhile: 404/410 then
        self.tally.record("get", r, {200, 404, 410})

    def original(self) -> None:
        if self.mine:
            ref = self.rnd.choice(self.mine)
            if ref.private:
                self._signed_get(ref, "original", mine=True)
            else:
                r = self.live.get(f"/{ref.hash}/original")
                if self.tally.record("original", r, {200}):
                    self._hash_ok(ref, r.content)

    def _signed_get(self, ref: Ref, variant: str, mine: bool) -> None:
        fmt, _, rest = variant.partition("/")
        quality, _, width = rest.partition("/")
        body: dict[str, object] = {"format": fmt, "expires_in": 300}
        if fmt != "original":
            body["quality"] = quality
            if width:
                body["width"] = int(width)
        r = self.live.post(
            f"/v1/images/{ref.id}/signed-url", json=body, headers=auth(ref.owner_key)
        )
        # a reference of another client may be deleted meanwhile (404)
        if not self.tally.record("sign", r, {200} if mine else {200, 404}) or r.status_code != 200:
            return
        path = "/" + r.json()["url"].split("/", 3)[3]
        got = self.live.get(path)
        if self.tally.record("signed-get", got, {200} if mine else {200, 404, 410}):
            if variant == "original" and got.status_code == 200:
                self._hash_ok(ref, got.content)

    def _hash_ok(self, ref: Ref, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != ref.hash:
            with self.tally.lock:
                self.tally.errors.append(f"original of {ref.hash} does not match its hash")

    def signed(self) -> None:
        if self.mine:
            self._signed_get(self.rnd.choice(self.mine), "webp/high/320", mine=True)

    def delete(self) -> None:
        if len(self.mine) < 3:
            return
        ref = self.mine.pop(self.rnd.randrange(len(self.mine)))
        with self.tally.lock:
            self.tally.live.pop(ref.id, None)
        r = self.live.delete(f"/v1/images/{ref.id}", headers=auth(self.key))
        if self.tally.record("delete", r, {204}):
            self.deleted.append(ref)

    def restore(self) -> None:
        if not self.deleted:
            return
        ref = self.deleted.pop(self.rnd.randrange(len(self.deleted)))
        r = self.live.post(f"/v1/images/{ref.id}/restore", headers=auth(self.key))
        # 404 once gc has collected the content (grace 0 in this soak)
        if self.tally.record("restore", r, {200, 404}) and r.status_code == 200:
            self.mine.append(ref)
            with self.tally.lock:
                self.tally.live[ref.id] = ref

    def listing(self) -> None:
        r = self.live.get("/v1/images?limit=50", headers=auth(self.key))
        self.tally.record("list", r, {200})


class Lifecycle(threading.Thread):
    """gc, reconcile and tier in turn, each as the CLI an operator's cron would run."""

    def __init__(self, env: dict[str, str], deadline: float) -> None:
        super().__init__(name="soak-lifecycle", daemon=True)
        self.env = env
        self.deadline = deadline
        self.runs: list[tuple[str, int, str]] = []

    def run(self) -> None:
        script = str(Path(sys.executable).parent / "image-origin")
        index = 0
        while time.monotonic() < self.deadline and index < 10_000:
            command = LIFECYCLE[index % len(LIFECYCLE)]
            index += 1
            try:
                out = subprocess.run(
                    [script, *command], env=self.env, capture_output=True, text=True, timeout=120
                )
                self.runs.append(
                    (" ".join(command), out.returncode, (out.stdout + out.stderr)[-800:])
                )
            except subprocess.TimeoutExpired:
                self.runs.append((" ".join(command), -1, "timed out after 120 s"))
            time.sleep(2)


class RssMonitor(threading.Thread):
    def __init__(self, master: int, deadline: float) -> None:
        super().__init__(name="soak-rss", daemon=True)
        self.master = master
        self.deadline = deadline
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        start = time.monotonic()
        while time.monotonic() < self.deadline:
            self.samples.append((time.monotonic() - start, procs.max_worker_rss_kib(self.master)))
            time.sleep(2)


@pytest.mark.slow
@pytest.mark.timeout(SOAK_SECONDS + TIMEOUT_MARGIN_SECONDS)
def test_soak(data_dir: Path, redis_url: str, s3_env: dict[str, str]) -> None:
    _cli_available()
    env = {
        **s3_env,
        "IMAGE_ORIGIN_REDIS_URL": redis_url,
        "IMAGE_ORIGIN_PREGENERATE": "webp/high/320,jpeg/high/320",
        # one transform slot per gunicorn thread: the pool never refuses (no 503 busy)
        "IMAGE_ORIGIN_TRANSFORM_CONCURRENCY": "4",
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "test-access"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "test-secret"),
    }
    process_env = {**os.environ, **base_env(data_dir, **env)}
    pool = _pool()
    tally = Tally()
    with gunicorn(data_dir, workers=2, threads=4, **env) as server:
        live = Live(server.url)
        worker_log = open(data_dir.parent / "soak-rq.log", "wb")  # noqa: SIM115 - closed below
        script = Path(sys.executable).parent / "image-origin"
        rq = subprocess.Popen(
            [str(script), "worker"], env=process_env, stdout=worker_log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + SOAK_SECONDS
            clients = [Client(i, live, tally, pool, deadline) for i in range(CLIENTS)]
            lifecycle = Lifecycle(process_env, deadline)
            monitor = RssMonitor(server.proc.pid, deadline)
            for thread in (*clients, lifecycle, monitor):
                thread.start()
            for thread in (*clients, lifecycle, monitor):
                thread.join(timeout=SOAK_SECONDS + 180)
                assert not thread.is_alive(), f"{thread.name} did not stop"
            # background jobs settle (pre-generation), bounded
            eventually(lambda: live.metric("image_origin_job_queue_depth") == 0, 120, "queue")
            tiers = {
                t: live.metric("image_origin_variant_lookups_total", tier=t)
                for t in ("cache", "store")
            }
            tiers["transform"] = live.metric("image_origin_transforms_total")
            _check_nothing_lost(live, tally, process_env)
        finally:
            stop_process(rq)
            worker_log.close()
        logs = server.logs()

    ops = sum(c.ops for c in clients)
    summary = ", ".join(f"{op} {status}: {n}" for (op, status), n in sorted(tally.statuses.items()))
    print(f"soak: {ops} operations in {SOAK_SECONDS:.0f}s; {summary}")
    print(f"soak: lifecycle runs {[(c, rc) for c, rc, _ in lifecycle.runs]}")
    lookups = sum(tiers.values())
    hit_ratio = tiers["cache"] / lookups if lookups else 0.0
    print(
        f"soak: variants answered from {tiers} (cache, stored variant, new transform); "
        f"hit ratio {hit_ratio:.3f}"
    )
    assert not tally.errors, "\n".join(tally.errors[:50])
    failed_runs = [run for run in lifecycle.runs if run[1] != 0]
    assert not failed_runs, failed_runs[:5]
    assert {run[0].split()[0] for run in lifecycle.runs} == {cmd[0] for cmd in LIFECYCLE}
    assert "Traceback" not in logs, logs[-3000:]
    assert hit_ratio >= MIN_HIT_RATIO, f"cache hit ratio {hit_ratio:.3f} < {MIN_HIT_RATIO}: {tiers}"
    _check_memory(monitor.samples)


def _check_nothing_lost(live: Live, tally: Tally, env: dict[str, str]) -> None:
    expected = {ref_id: ref for ref_id, ref in tally.live.items()}
    listed = {doc["id"]: doc for key in (ALICE, BOB) for doc in live.references(key)}
    assert set(listed) == set(expected), (
        f"missing: {sorted(set(expected) - set(listed))[:10]}, "
        f"unexpected: {sorted(set(listed) - set(expected))[:10]}"
    )
    # every live reference's original, hash-checked (signed for private content)
    for ref in {r.hash: r for r in expected.values()}.values():
        path = None
        if ref.private:
            body = {"format": "original", "expires_in": 60}
            r = live.post(f"/v1/images/{ref.id}/signed-url", json=body, headers=auth(ref.owner_key))
            path = "/" + r.json()["url"].split("/", 3)[3]
        assert live.original_ok(ref.hash, path), f"original of {ref.hash} missing or corrupt"
    # ref_count == live references, for every object
    live_per_hash = Counter(doc["hash"] for doc in listed.values())
    for obj in live.objects():
        assert obj["ref_count"] == live_per_hash.get(obj["hash"], 0), obj
    assert set(live_per_hash) <= {o["hash"] for o in live.objects()}
    # a sample of variants equals a fresh render of the same spec
    settings = load({k: v for k, v in env.items() if k.startswith("IMAGE_ORIGIN_")})
    public = sorted({r.hash for r in expected.values() if not r.private})
    for digest in random.Random(7).sample(public, min(12, len(public))):
        original = live.get(f"/{digest}/original").content
        for spec in (VariantSpec("webp", "high", 320), VariantSpec("jpeg", "low", 160)):
            served = live.get(f"/{digest}/{spec.path}")
            assert served.status_code == 200, (digest, spec)
            fresh = render(original, spec, settings).data
            assert hashlib.sha256(served.content).digest() == hashlib.sha256(fresh).digest()
            with Image.open(io.BytesIO(served.content)) as im:
                im.load()
    script = Path(sys.executable).parent / "image-origin"
    verify = subprocess.run(
        [str(script), "verify"], env=env, capture_output=True, text=True, timeout=300
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _check_memory(samples: list[tuple[float, int]]) -> None:
    assert samples, "no RSS sample"
    peak = max(rss for _, rss in samples)
    half = samples[len(samples) // 2][0]
    first = max((rss for t, rss in samples if t < half), default=0)
    second = max((rss for t, rss in samples if t >= half), default=0)
    mib = (peak // 1024, first // 1024, second // 1024)
    print(f"soak: worker RSS peak {mib[0]} MiB; first half {mib[1]}, second {mib[2]}")
    assert peak <= RSS_MIB * 1024, f"worker RSS {peak // 1024} MiB over {RSS_MIB} MiB"
    assert second <= first * 1.25 + 64 * 1024, f"RSS grew: {first // 1024} -> {second // 1024} MiB"
