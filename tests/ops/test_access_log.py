"""The access log written to a file (``--access-logfile``): one JSON line per request, each on
disk before the next request is answered, and a log rotation (move the file, SIGUSR1 to the
master) moves the following lines to the new file without losing or splitting any."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import requests

from tests.live import gunicorn


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _ids(path: Path) -> set[str]:
    return {r["request_id"] for r in _lines(path) if r.get("event") == "request"}


def _get(url: str, request_id: str) -> None:
    r = requests.get(f"{url}/healthz", headers={"X-Request-ID": request_id}, timeout=10)
    assert r.status_code == 200 and r.headers["X-Request-ID"] == request_id


def _wait_for(path: Path, wanted: set[str]) -> set[str]:
    deadline = time.monotonic() + 15
    while not wanted <= (seen := _ids(path)):
        assert time.monotonic() < deadline, f"missing access lines: {wanted - seen}"
        time.sleep(0.05)
    return seen


def test_access_log_file_gets_every_line_and_follows_a_rotation(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    log = tmp_path / "access.log"
    args = f"--access-logfile {log}"
    with gunicorn(data_dir, workers=2, threads=4, GUNICORN_CMD_ARGS=args) as server:
        before = {f"before-{i}" for i in range(20)}
        threads = [threading.Thread(target=_get, args=(server.url, i)) for i in sorted(before)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _wait_for(log, before)  # every line whole: _lines parsed each one as JSON

        rotated = tmp_path / "access.log.1"
        log.rename(rotated)
        os.kill(server.proc.pid, signal.SIGUSR1)  # gunicorn reopens its log files
        after = {f"after-{i}" for i in range(20)}
        deadline = time.monotonic() + 15
        sent: set[str] = set()
        while not log.exists():  # each worker reopens on its own; keep asking until one has
            assert time.monotonic() < deadline, "no new access log after SIGUSR1"
            probe = f"probe-{len(sent)}"
            _get(server.url, probe)
            sent.add(probe)
            time.sleep(0.05)
        time.sleep(1.0)  # the other worker reopens too
        for request_id in sorted(after):
            _get(server.url, request_id)
        seen = _wait_for(log, after)
        old = _ids(rotated)
    assert before <= old
    assert not (after & old), "lines written to the rotated file after the reopen"
    assert {r["status"] for r in _lines(log) if r["request_id"] in after} == {200}
    assert sent <= seen | old  # the probes are in one file or the other, none lost
