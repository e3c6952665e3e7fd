"""``image-origin gc`` from the outside: the grace floor, exit codes, two processes at once, and
the same work as RQ jobs (task wrappers and the shipped cron schedule)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from app.jobs import tasks
from app.jobs.common import GraceTooShort
from app.jobs.gc import run_gc
from tests.lifecycle.conftest import (
    ROOT,
    blob_path,
    content,
    db,
    delete_all,
    ingest,
    make_variant,
    spawn,
    variant_files,
)

SUMMARY = re.compile(r"^gc: collected (\d+) of (\d+) candidate\(s\)", re.M)


def _garbage(services, seed: int, variant: bool = False) -> str:
    digest = ingest(services, content(seed)).object.hash
    if variant:
        make_variant(services, digest)
    delete_all(services, digest)
    return digest


# --- 8. zero grace refused without confirmation ----------------------------------------------
@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--grace", "0"], {}),
        (["--grace", "59"], {}),
        ([], {"IMAGE_ORIGIN_GC_GRACE_SECONDS": "0"}),
        ([], {"IMAGE_ORIGIN_GC_GRACE_SECONDS": "30"}),
        (["--yes"], {"IMAGE_ORIGIN_GC_GRACE_SECONDS": "30"}),  # --yes confirms only --grace
    ],
)
def test_grace_below_the_floor_is_refused_without_confirmation(services, data_dir, cli, args, env):
    digest = _garbage(services, 1)
    result = cli("gc", *args, env=env)
    assert result.exit_code == 2, result.output
    assert "safety floor of 60 s" in result.output and "--yes" in result.output
    assert blob_path(data_dir, digest).exists()  # refused: nothing deleted
    with pytest.raises(GraceTooShort):
        run_gc(services, grace=0)


def test_grace_confirmed_or_at_the_floor_runs(services, data_dir, cli):
    digest = _garbage(services, 2, variant=True)
    at_floor = cli("gc", "--grace", "60")
    assert at_floor.exit_code == 0, at_floor.output
    assert SUMMARY.search(at_floor.output).groups() == ("0", "0")  # deleted just now
    dry = cli("gc", "--grace", "0", "--yes", "--dry-run", "-v")
    assert dry.exit_code == 0 and f"would collect {digest}" in dry.output
    assert "dry run: 1 object(s) would be collected" in dry.output
    assert blob_path(data_dir, digest).exists()
    done = cli("gc", "--grace", "0", "--yes", "-v")
    assert done.exit_code == 0, done.output
    assert f"collected {digest}" in done.output
    assert SUMMARY.search(done.output).groups() == ("1", "1")
    assert not blob_path(data_dir, digest).exists() and variant_files(data_dir, digest) == []
    assert services.meta.get_object(digest) is None
    assert cli("gc", "--grace", "0", "--yes").exit_code == 0  # safe to re-run


def test_every_command_has_help(cli):
    for command in ("gc", "reconcile", "verify", "tier"):
        result = cli(command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output
    assert "--dry-run" in cli("gc", "--help").output
    assert "--dry-run" in cli("reconcile", "--help").output
    assert "--dry-run" in cli("tier", "--help").output
    assert "--sample" in cli("verify", "--help").output
    assert "--dry-run" in cli("verify", "--help").output


def _wait_until_open(proc, path: Path, timeout: float = 60.0) -> None:
    """Block until ``proc`` holds ``path`` open (read from /proc), or fail if it exits first."""
    fd_dir = Path(f"/proc/{proc.pid}/fd")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gc exited early: {proc.communicate()}")
        try:
            targets = {os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir)}
        except OSError:  # an fd closed while we looked
            targets = set()
        if str(path.resolve()) in targets:
            return
        time.sleep(0.02)
    raise AssertionError(f"gc (pid {proc.pid}) did not open {path} within {timeout} s")


def _wait_until_queued(procs, gate, count: int, timeout: float = 60.0) -> None:
    """PostgreSQL: block until ``count`` other sessions wait for a lock on objects."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"gc exited early: {proc.communicate()}")
        waiting = gate.execute(
            "SELECT count(*) AS n FROM pg_locks WHERE NOT granted AND locktype = 'relation' "
            "AND relation = 'objects'::regclass"
        ).fetchone()["n"]
        if waiting >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{count} gc processes did not queue on the lock within {timeout} s")


# --- 12. two gc processes at once --------------------------------------------------------------
def test_two_gc_processes_at_once(services, data_dir):
    garbage = {_garbage(services, 100 + i, variant=i % 3 == 0) for i in range(120)}
    live = {ingest(services, content(1000 + i)).object.hash for i in range(10)}
    # Line them up: hold the database's write lock while both start, so both queue behind it
    # (busy/lock timeout 15 s) and are released together, whatever their start-up times. The
    # gate opens only once both are there (their start-up, which can take seconds on a loaded
    # machine, is over), not after a fixed sleep.
    with db(services) as gate, gate.writes_blocked():
        procs = [spawn(data_dir, "gc", "--grace", "0", "--yes", "-v", "--batch", "7") for _ in "ab"]
        if gate.postgres:  # both past the candidate query, queued on their first claim
            _wait_until_queued(procs, gate, len(procs))
        else:
            for proc in procs:
                _wait_until_open(proc, data_dir / "metadata.db")
            time.sleep(0.5)  # past the candidate query, into the first claim
    outputs = [p.communicate(timeout=120) for p in procs]
    collected: list[set[str]] = []
    seen = 0
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out + err
        assert "Traceback" not in err, err
        collected.append(set(re.findall(r"^gc: collected ([0-9a-f]{64})$", out, re.M)))
        summary = SUMMARY.search(out)
        assert int(summary.group(1)) == len(collected[-1])
        seen += int(summary.group(2))
    a, b = collected
    # They really raced: both picked their first page before either claimed anything, so some
    # object was a candidate for both (and one of them found it claimed and skipped it). How
    # the rest splits is up to SQLite's busy handler, which is not fair: one process can take
    # every batch while the other sleeps between lock probes, so "both collected some" is not
    # something to assert.
    assert seen > len(garbage)
    assert not a & b  # nothing deleted twice
    assert a | b == garbage  # everything collected by one of them
    for digest in garbage:
        assert services.meta.get_object(digest) is None
        assert not blob_path(data_dir, digest).exists()
    for digest in live:  # nothing referenced deleted
        assert services.meta.get_object(digest).ref_count == 1
        assert blob_path(data_dir, digest).exists()


# --- as RQ jobs ---------------------------------------------------------------------------------
def test_lifecycle_jobs_run_as_tasks(services, data_dir):
    tasks.bind(services)
    digest = _garbage(services, 3)
    assert set(tasks.TASKS) >= {"gc", "reconcile", "verify", "tier", "promote"}
    with pytest.raises(GraceTooShort):
        tasks.resolve("gc")(grace=0)
    result = tasks.resolve("gc")(grace=0, confirm=True)
    assert result["ok"] and result["collected"] == 1
    assert not blob_path(data_dir, digest).exists()
    assert tasks.resolve("reconcile")()["ok"]
    assert tasks.resolve("verify")(sample=50)["ok"]
    assert tasks.resolve("tier")(dry_run=True)["ok"]


def test_shipped_cron_schedule_registers_the_four_jobs(redis_url):
    import redis
    from rq.cron import CronScheduler

    scheduler = CronScheduler(connection=redis.Redis.from_url(redis_url))
    scheduler.load_config_from_file(str(ROOT / "config" / "rq_cron.py"))
    names = {job.func.__name__ for job in scheduler.get_jobs()}
    assert names == {"gc", "reconcile", "verify", "tier"}
