"""The lifecycle commands show a progress bar on a terminal and none in a pipe or a log.

Real processes: the console script writes to the slave side of a pseudo-terminal (what an
operator's shell gives it), or to a pipe (cron, systemd, CI logs).
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import base_env
from tests.lifecycle.conftest import ROOT, content, delete_all, ingest

SCRIPT = Path(sys.executable).parent / "image-origin"
# click's bar with show_pos: "<label>  [####...]  3/3"
BAR = re.compile(r"\[[#\-]+\]\s+\d+/3")


def _on_a_terminal(data_dir: Path, *args: str) -> tuple[int, str]:
    """Run the console script with stdout and stderr on a pseudo-terminal; its whole output."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [str(SCRIPT), *args],
        cwd=ROOT,
        env={**os.environ, **base_env(data_dir)},
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], 60)
            if not ready:
                proc.kill()
                raise AssertionError(f"no output for 60 s: {out[-500:]!r}")
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(leader)
    return proc.wait(timeout=60), out.decode(errors="replace")


def _in_a_pipe(data_dir: Path, *args: str) -> tuple[int, str]:
    done = subprocess.run(
        [str(SCRIPT), *args],
        cwd=ROOT,
        env={**os.environ, **base_env(data_dir)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("args", "summary"),
    [
        (("gc", "--grace", "0", "--yes"), r"^gc: collected 3 of 3 candidate"),
        (("verify",), r"^verify: "),
    ],
)
def test_progress_bar_on_a_terminal_only(services, data_dir, args, summary) -> None:
    digests = [ingest(services, content(500 + i)).object.hash for i in range(3)]
    if args[0] == "gc":
        for digest in digests:
            delete_all(services, digest)
    code, shown = _on_a_terminal(data_dir, *args)
    assert code == 0, shown
    assert BAR.search(shown), shown
    assert re.search(summary, shown.replace("\r", "\n"), re.M), shown

    if args[0] == "gc":  # nothing left to collect: gather three more for the pipe run
        digests = [ingest(services, content(600 + i)).object.hash for i in range(3)]
        for digest in digests:
            delete_all(services, digest)
    code, logged = _in_a_pipe(data_dir, *args)
    assert code == 0, logged
    assert not BAR.search(logged) and "\r" not in logged, logged
    assert re.search(summary, logged, re.M), logged
