"""A real gunicorn running the shipped config, for tests that need processes and sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.conftest import base_env
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


class LiveServer:
    def __init__(self, url: str, proc: subprocess.Popen, data_dir: Path, log: Path) -> None:
        self.url = url
        self.proc = proc
        self.data_dir = data_dir
        self.log = log

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextmanager
def gunicorn(
    data_dir: Path, workers: int = 2, threads: int = 4, **env_extra: str
) -> Iterator[LiveServer]:
    port = free_port()
    env = {**os.environ, **base_env(data_dir, **env_extra)}
    env["IMAGE_ORIGIN_BIND"] = f"127.0.0.1:{port}"
    env["GUNICORN_WORKERS"] = str(workers)
    env["GUNICORN_THREADS"] = str(threads)
    if "PROMETHEUS_MULTIPROC_DIR" not in env_extra:
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn.conf.py makes its own
    log = data_dir.parent / f"gunicorn-{port}.log"
    gunicorn_bin = Path(sys.executable).parent / "gunicorn"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(gunicorn_bin), "-c", str(ROOT / "config" / "gunicorn.conf.py"), "app.wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", proc, data_dir, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{server.logs()[-3000:]}")
            try:
                if requests.get(server.url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start:\n{server.logs()[-3000:]}")
            time.sleep(0.1)
        yield server
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)
