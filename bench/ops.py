"""Figure 6: `image-origin gc` and `image-origin tier` over 100,000 objects on local disk and
SQLite. The data dir is seeded directly (tiny blobs written as files at their store paths, rows
bulk-inserted after `image-origin migrate`), then the real console script is timed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from bench import servers
from bench.figures import Row

DAY = 86400.0


def cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    script = servers.PROJECT_BIN / "image-origin"
    return subprocess.run(
        [str(script), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def run_bounded(
    args: list[str], env: dict[str, str], cap: float
) -> tuple[subprocess.CompletedProcess, bool]:
    """Run the console script for at most ``cap`` seconds (then stop its process group), so a
    slow command cannot stretch `make bench` far past its budget."""
    script = servers.PROJECT_BIN / "image-origin"
    proc = subprocess.Popen(
        [str(script), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=cap)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), True


def available(command: str, env: dict[str, str]) -> bool:
    return cli(command, "--help", env=env, timeout=60).returncode == 0


def seed(data_dir: Path, count: int, *, deleted: bool, now: float) -> None:
    """``count`` objects with one tiny blob and one reference each.

    deleted=True: every reference soft-deleted two days ago, ref_count 0 (GC candidates past
    any grace). deleted=False: live, last read 100 days ago, hot (tiering candidates).
    """
    from app.settings import load
    from app.storage import keys
    from app.storage.local import LocalBlobStore

    env = servers.ours_env(data_dir, 0)
    settings = load(env)
    store = settings.resolved_storage_url.removeprefix("file://")
    root = LocalBlobStore(store).root
    db = sqlite3.connect(settings.resolved_database_url.removeprefix("sqlite:///"))
    db.execute("PRAGMA synchronous=OFF")
    objects, refs = [], []
    made_dirs: set[Path] = set()
    for i in range(count):
        body = f"bench object {i}\n".encode()
        digest = hashlib.sha256(body).hexdigest()
        path = root / keys.relative_path(keys.original_key(digest))
        if path.parent not in made_dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            made_dirs.add(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, body)
        os.close(fd)
        created = now - 200 * DAY
        if deleted:
            objects.append(
                (digest, "image/jpeg", len(body), 1, 1, 0, created, created, now - 2 * DAY, "hot")
            )
            refs.append((f"img_bench{i:08d}", digest, "bench", None, 0, created, now - 2 * DAY))
        else:
            objects.append(
                (digest, "image/jpeg", len(body), 1, 1, 1, created, now - 100 * DAY, None, "hot")
            )
            refs.append((f"img_bench{i:08d}", digest, "bench", None, 0, created, None))
    with db:
        db.executemany(
            "INSERT INTO objects (hash, mime_type, size, width, height, ref_count, created_at, "
            "last_accessed_at, deleted_at, tier) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            objects,
        )
        db.executemany(
            "INSERT INTO refs (id, hash, owner, original_filename, private, created_at, "
            "deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            refs,
        )
    db.close()


def remaining(data_dir: Path, sql: str) -> int:
    db = sqlite3.connect(data_dir / "metadata.db")
    try:
        return int(db.execute(sql).fetchone()[0])
    finally:
        db.close()


def run_job(
    name: str, args: list[str], count: int, deleted: bool, check_sql: str, cap: float
) -> Row:
    label = f"6. image-origin {' '.join(args)} over {count:,} objects (local disk, SQLite)"
    data_dir = servers.WORK / "ops" / name
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    env = servers.ours_env(data_dir, 0)
    if not available(args[0], env):
        return Row(
            label,
            None,
            None,
            "s",
            "<= 60 s",
            met=False,
            note=f"not available: `image-origin {args[0]}` does not exist yet",
        )
    migrated = cli("migrate", env=env)
    if migrated.returncode != 0:
        return Row(
            label,
            None,
            None,
            "s",
            "<= 60 s",
            met=False,
            note=f"migrate failed: {migrated.stderr[-200:]}",
        )
    now = time.time()
    started = time.perf_counter()
    seed(data_dir, count, deleted=deleted, now=now)
    seeded = time.perf_counter() - started
    started = time.perf_counter()
    done, timed_out = run_bounded(args, env, cap)
    seconds = time.perf_counter() - started
    left = remaining(data_dir, check_sql)
    summary = (done.stdout.strip().splitlines() or [""])[-1][:200]
    note = f"exit {done.returncode}; {left} left to do; seeding took {seeded:.1f} s; {summary}"
    if timed_out:
        finished = count - left
        seconds = seconds * count / finished if finished else float("inf")
        note = (
            f"stopped after {cap:.0f} s with {finished:,} of {count:,} done: the time shown is "
            f"extrapolated at that rate; seeding took {seeded:.1f} s"
        )
    row = Row(
        label,
        seconds,
        None,
        "s",
        "<= 60 s",
        note=note,
        detail={"stderr_tail": done.stderr[-500:], "timed_out": timed_out},
    ).judge()
    row.met = bool(row.met) and done.returncode == 0 and left == 0 and not timed_out
    shutil.rmtree(data_dir, ignore_errors=True)
    return row


def operations(count: int = 100_000, cap: float = 120.0) -> list[Row]:
    """Each command gets ``cap`` seconds (twice the target); past that the row shows the total
    extrapolated from the share done, and the target as missed."""
    return [
        run_job(
            "gc",
            ["gc", "--grace", "0", "--yes"],
            count,
            True,
            "SELECT COUNT(*) FROM objects WHERE ref_count = 0",
            cap,
        ),
        run_job(
            "tier",
            ["tier", "--after-days", "0"],
            count,
            False,
            "SELECT COUNT(*) FROM objects WHERE tier = 'hot'",
            cap,
        ),
    ]
