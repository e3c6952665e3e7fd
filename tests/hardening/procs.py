"""Processes of a live gunicorn, read from /proc (Linux): its workers and their memory.

Memory is read two ways: VmRSS (resident now) and VmHWM (the resident peak since the process
started, or since ``reset_peak``). A spike during one decode that is freed before the request
answers shows only in VmHWM.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    """Direct children of ``pid``: gunicorn's workers when ``pid`` is the master."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after it
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS), 0 if it has exited."""
    return _status_kib(pid, "VmRSS")


def peak_rss_kib(pid: int) -> int:
    """Peak resident set size of ``pid`` in KiB (VmHWM) since the last ``reset_peak``, 0 if it
    has exited."""
    return _status_kib(pid, "VmHWM")


def reset_peak(pid: int) -> None:
    """Reset ``pid``'s VmHWM to its current RSS (``echo 5 > /proc/PID/clear_refs``: Linux >= 4.0,
    needs the right to write there, i.e. the same user or root). A process that has exited is
    left alone; any other refusal raises OSError."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except (FileNotFoundError, ProcessLookupError):
        pass


def workers(master: int, expected: int, timeout: float = 30.0) -> list[int]:
    """The master's ``expected`` live workers, waiting (bounded) for respawns to settle."""
    deadline = time.monotonic() + timeout
    while True:
        pids = children(master)
        if len(pids) == expected:
            return pids
        if time.monotonic() > deadline:
            raise TimeoutError(f"gunicorn {master} has workers {pids}, expected {expected}")
        time.sleep(0.1)


def max_worker_rss_kib(master: int) -> int:
    return max((rss_kib(p) for p in children(master)), default=0)


def kill(pid: int) -> None:
    """SIGKILL one process we started (a gunicorn worker), by its id."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[0]


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Until ``pid`` has exited (a zombie waiting for the master to reap it counts as gone)."""
    deadline = time.monotonic() + timeout
    while _state(pid) not in (None, "Z"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} still alive")
        time.sleep(0.05)
