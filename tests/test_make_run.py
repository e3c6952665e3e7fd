"""`make run` as the README gives it: dev keys made and printed, gunicorn serving uploads."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import requests

from tests import images
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_make_run_prints_a_working_key_and_serves(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGE_ORIGIN_", "PROMETHEUS"))}
    env.update({"IMAGE_ORIGIN_BIND": f"127.0.0.1:{port}", "IMAGE_ORIGIN_DATA_DIR": str(data)})
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["make", "run"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        key = None
        deadline = time.monotonic() + 240  # the first run may install the package
        while time.monotonic() < deadline and proc.poll() is None:
            text = log.read_text(errors="replace")
            found = re.search(r"dev API key: (\S+)", text)
            if found and f"Listening at: http://127.0.0.1:{port}" in text:
                key = found.group(1)
                break
            time.sleep(0.2)
        text = log.read_text(errors="replace")
        assert key, text[-3000:]
        assert f"http://127.0.0.1:{port}" in text and "curl" in text
        assert (data / "dev-keys.toml").stat().st_mode & 0o077 == 0  # secrets: owner only
        up = requests.post(
            f"http://127.0.0.1:{port}/v1/images",
            data=images.jpeg(50, 40),
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert up.status_code == 201, up.text
        doc = up.json()
        assert (data / "metadata.db").exists()
        got = requests.get(f"http://127.0.0.1:{port}/{doc['hash']}/webp/high/160", timeout=30)
        assert got.status_code == 200 and got.headers["Content-Type"] == "image/webp"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
