"""Counters of gc, reconcile and tier run from cron (separate processes) reach /metrics when
they share gunicorn's PROMETHEUS_MULTIPROC_DIR, as the README tells operators to set it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import requests

from tests import images
from tests.conftest import auth, base_env
from tests.live import gunicorn


def _sample(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_cli_job_counters_are_in_gunicorns_metrics(data_dir: Path, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    with gunicorn(data_dir, workers=2, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)) as server:
        doc = requests.post(
            f"{server.url}/v1/images", data=images.jpeg(seed=808), headers=auth(), timeout=30
        ).json()
        requests.delete(f"{server.url}/v1/images/{doc['id']}", headers=auth(), timeout=30)
        kept = requests.post(
            f"{server.url}/v1/images", data=images.png(seed=809), headers=auth(), timeout=30
        ).json()
        with sqlite3.connect(data_dir / "metadata.db") as db:  # drift for reconcile to fix
            db.execute("UPDATE objects SET ref_count = 5 WHERE hash = ?", (kept["hash"],))
        env = {
            **os.environ,
            **base_env(data_dir),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
        cli = str(Path(sys.executable).parent / "image-origin")
        for args in (["gc", "--grace", "0", "--yes"], ["reconcile"], ["tier", "--after-days", "0"]):
            run = subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, (args, run.stdout, run.stderr)
        text = requests.get(f"{server.url}/metrics", timeout=10).text
        assert _sample(text, 'image_origin_gc_objects_total{outcome="collected"}') == 1
        assert _sample(text, "image_origin_reconcile_total") >= 1  # the drift it fixed
        assert _sample(text, 'image_origin_tier_moves_total{to="cold"}') == 1
