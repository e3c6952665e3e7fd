"""The mutation corpus (corpus.py) uploaded whole: through the app, then against gunicorn.

Each upload answers 201 or a 4xx with a JSON error within a time bound; what is accepted also
renders (or is refused with a 4xx); nothing is left in staging and no blob exists that no row
points at. Against a real gunicorn, the worker's peak resident memory during each case stays under
a bound and /healthz answers after every single case. The peak is VmHWM, reset before each case
(procs.reset_peak): a decode that allocates and frees before the answer is still counted, which
VmRSS read afterwards would miss.

Bounds (env): HARDENING_UPLOAD_SECONDS (per request, default 15), HARDENING_RSS_MIB (per worker,
default 1024: the worst legitimate case is a decode at the pixel limit, 50 MP x 4 bytes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import auth, in_ci
from tests.hardening import procs
from tests.hardening.conftest import assert_json_error
from tests.hardening.corpus import Case, corpus
from tests.live import gunicorn
from tests.test_upload_api import blob_files, staging_files

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # corrupt input, on purpose

UPLOAD_SECONDS = float(os.environ.get("HARDENING_UPLOAD_SECONDS", "15"))
RSS_MIB = int(os.environ.get("HARDENING_RSS_MIB", "1024"))
VARIANTS = ("webp/high/160", "jpeg/low")
REFUSALS = {"unsupported_media_type", "undecodable", "too_many_pixels", "missing_file"}


def test_corpus_through_the_app(client, data_dir: Path) -> None:
    failures: list[str] = []
    accepted: set[str] = set()
    for case in corpus():
        started = time.monotonic()
        r = client.post("/v1/images", data=case.data, headers=auth())
        elapsed = time.monotonic() - started
        if elapsed > UPLOAD_SECONDS:
            failures.append(f"{case.name}: {elapsed:.1f}s")
        if r.status_code == 201:
            accepted.add(r.json["hash"])
            failures += _check_variants(client, case, r.json["hash"])
            continue
        try:
            assert assert_json_error(r) in REFUSALS
        except AssertionError as exc:
            failures.append(f"{case.name}: {r.status_code} {exc}")
    assert not failures, "\n".join(failures)
    assert staging_files(data_dir) == []
    stored = {p.name for p in blob_files(data_dir)}
    assert stored == accepted  # nothing refused was stored; everything accepted was
    assert any(c.name.endswith("/valid") for c in corpus())


def _check_variants(client, case: Case, digest: str) -> list[str]:  # type: ignore[no-untyped-def]
    problems = []
    for variant in VARIANTS:
        started = time.monotonic()
        v = client.get(f"/{digest}/{variant}")
        if time.monotonic() - started > UPLOAD_SECONDS:
            problems.append(f"{case.name} {variant}: slow")
        if v.status_code == 200:
            if not v.headers["Content-Type"].startswith("image/") or not v.data:
                problems.append(f"{case.name} {variant}: 200 without an image")
            continue
        try:
            assert_json_error(v)
        except AssertionError as exc:
            problems.append(f"{case.name} {variant}: {v.status_code} {exc}")
    return problems


def _reset_peaks(pids: list[int]) -> None:
    try:
        for pid in pids:
            procs.reset_peak(pid)
    except OSError as exc:
        reason = f"cannot reset a worker's peak memory (/proc/PID/clear_refs): {exc}"
        if in_ci():
            pytest.fail(reason + " (required when CI=true: Linux >= 4.0, run as root)")
        pytest.skip(reason)


def test_peak_probe_sees_a_freed_spike() -> None:
    """The probe the gunicorn test relies on: a child allocates 256 MiB and frees it again
    before answering; VmRSS afterwards misses it, VmHWM after a reset does not."""
    spike = 256 * 1024
    code = (
        "import sys\n"
        "sys.stdin.readline()\n"
        "b = bytearray(256 << 20)\n"
        "b[::4096] = b'x' * len(b[::4096])\n"
        "del b\n"
        "print('freed', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        _reset_peaks([child.pid])
        before = procs.peak_rss_kib(child.pid)
        assert before < spike // 2, before
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "freed"
        assert procs.rss_kib(child.pid) < spike // 2  # what the old bound read
        assert procs.peak_rss_kib(child.pid) >= spike  # what it reads now
        _reset_peaks([child.pid])
        assert procs.peak_rss_kib(child.pid) < spike // 2  # and the reset works
        child.stdin.write("\n")
        child.stdin.flush()
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_corpus_against_gunicorn(data_dir: Path) -> None:
    """One worker, so every request lands in the process whose memory is measured."""
    failures: list[str] = []
    peak_kib = 0
    peak_case = ""
    with gunicorn(data_dir, workers=1, threads=2) as server:
        (worker,) = procs.workers(server.proc.pid, 1)
        baseline_kib = procs.rss_kib(worker)
        session = requests.Session()
        for case in corpus():
            # the peak of this case alone: upload and its variants (a respawned worker starts
            # from zero anyway)
            pids = procs.children(server.proc.pid) or [worker]
            _reset_peaks(pids)
            started = time.monotonic()
            try:
                r = session.post(
                    f"{server.url}/v1/images",
                    data=case.data,
                    headers=auth(),
                    timeout=UPLOAD_SECONDS,
                )
            except requests.RequestException as exc:
                failures.append(f"{case.name}: no answer within {UPLOAD_SECONDS}s ({exc})")
                continue
            elapsed = time.monotonic() - started
            if r.status_code == 201:
                for variant in VARIANTS:
                    v = session.get(
                        f"{server.url}/{r.json()['hash']}/{variant}", timeout=UPLOAD_SECONDS
                    )
                    if v.status_code >= 500:
                        failures.append(f"{case.name} {variant}: {v.status_code} {v.text[:200]}")
            elif r.status_code >= 500 or elapsed > UPLOAD_SECONDS:
                failures.append(f"{case.name}: {r.status_code} in {elapsed:.1f}s {r.text[:200]}")
            else:
                try:
                    assert_json_error(r)
                except AssertionError as exc:
                    failures.append(f"{case.name}: {exc}")
            pids = sorted(set(pids) | set(procs.children(server.proc.pid)))
            rss = max(procs.peak_rss_kib(p) for p in pids)
            if rss > peak_kib:
                peak_kib, peak_case = rss, case.name
            health = session.get(f"{server.url}/healthz", timeout=5)
            if health.status_code != 200:
                failures.append(f"after {case.name}: /healthz {health.status_code}")
                break
        logs = server.logs()
    mib = (baseline_kib // 1024, peak_kib // 1024)
    print(f"worker RSS: baseline {mib[0]} MiB, peak (VmHWM) {mib[1]} MiB ({peak_case})")
    assert not failures, "\n".join(failures)
    assert peak_kib <= RSS_MIB * 1024, f"worker peak RSS {peak_kib // 1024} MiB in {peak_case}"
    for sign in ("WORKER TIMEOUT", "Perhaps out of memory", "Traceback"):
        assert sign not in logs, logs[-3000:]
    assert staging_files(data_dir) == []
