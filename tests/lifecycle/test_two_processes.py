"""``tier`` and ``reconcile`` run twice at once (two nodes, or a cron overlap): no errors,
nothing moved or repaired twice, nothing referenced lost. (``gc`` has its own test in
test_gc_cli.py.) Real processes on local disk and SQLite, started behind the database's write
lock so that both are past their start-up when the work begins."""

from __future__ import annotations

import hashlib
import re
import time

from app.metadata import TIER_COLD
from tests.lifecycle.conftest import (
    age,
    blob_path,
    content,
    db,
    ingest,
    make_variant,
    spawn,
    variant_files,
)
from tests.lifecycle.test_gc_cli import _wait_until_open

DAY = 86400.0


def _run_two_at_once(data_dir, *args: str) -> list[str]:
    """Start two processes of ``image-origin *args`` held at the write lock, release them
    together, and return their stdout (both must succeed without a traceback)."""
    gate = db(data_dir)
    gate.execute("BEGIN IMMEDIATE")
    try:
        procs = [spawn(data_dir, *args) for _ in "ab"]
        for proc in procs:
            _wait_until_open(proc, data_dir / "metadata.db")
        time.sleep(0.3)
    finally:
        gate.execute("ROLLBACK")
        gate.close()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
        assert "Traceback" not in err, err
        outputs.append(out)
    return outputs


def test_two_tier_processes_at_once(services, data_dir):
    digests = [ingest(services, content(300 + i)).object.hash for i in range(60)]
    with_variants = digests[::6]
    for digest in with_variants:
        make_variant(services, digest)
    outputs = _run_two_at_once(data_dir, "tier", "--after-days", "0", "--batch", "5")
    moved = [
        int(re.search(r"^tier: moved (\d+) of \d+ object", out, re.M).group(1)) for out in outputs
    ]
    assert sum(moved) == len(digests)  # each original moved once, by one of them
    for digest in digests:
        assert services.meta.get_object(digest).tier == TIER_COLD
        assert not blob_path(data_dir, digest).exists()
        cold = blob_path(data_dir, digest, cold=True)
        assert hashlib.sha256(cold.read_bytes()).hexdigest() == digest  # nothing lost
    for digest in with_variants:
        assert variant_files(data_dir, digest) == []
        assert variant_files(data_dir, digest, cold=True)
    obj = services.meta.get_object(digests[0])
    verified = services.service.read_original(obj)  # still served, from the cold tier
    verified.close()


def test_two_reconcile_processes_at_once(services, data_dir):
    live = [ingest(services, content(400 + i)).object.hash for i in range(30)]
    conn = db(data_dir)
    drifted = live[::2]
    for digest in drifted:  # ref_count wrong on purpose
        conn.execute("UPDATE objects SET ref_count = 7 WHERE hash = ?", (digest,))
    conn.close()
    orphans = []
    for i in range(20):  # blobs of crashed uploads, older than the grace
        data = content(500 + i)
        digest = hashlib.sha256(data).hexdigest()
        path = blob_path(data_dir, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        age(path, 2 * DAY)
        orphans.append(digest)
    outputs = _run_two_at_once(data_dir, "reconcile", "--batch", "4")
    fixed = sum(int(re.search(r"ref_count fixed (\d+)", out).group(1)) for out in outputs)
    removed = sum(int(re.search(r"orphans removed (\d+)", out).group(1)) for out in outputs)
    assert fixed == len(drifted)  # each drift corrected once
    assert removed == len(orphans)  # each orphan removed once
    for digest in live:
        assert services.meta.get_object(digest).ref_count == 1
        assert blob_path(data_dir, digest).exists()  # nothing referenced deleted
    for digest in orphans:
        assert not blob_path(data_dir, digest).exists()
        assert services.meta.get_object(digest) is None
