"""Finished staging files kept for the next uploads of the same process, for a few seconds.

Writing 9.8 MB into a new file costs about 1.9 ms here: the kernel allocates and zeroes every
page-cache page and every block; removing it again costs 0.35 ms more. Overwriting a file
that already has its pages costs 0.3 ms. On a two-core node that difference is CPU taken from
receiving and hashing the same upload: staging 9.8 MB from a socket took 6.95 ms with a new
file each time and 6.1 ms over a spare; a duplicate 10 MB upload end to end (``make bench``
figure 3, three runs each, alternated) went from 942 to 979 MB/s.

So ``StagingFile.discard`` renames a finished staging file to ``spare-<host>-<pid>-<random>``
instead of removing it (at most SPARE_FILES per process and folder, none larger than
SPARE_MAX_BYTES), and the next StagingFile renames a spare back to a fresh ``upload-`` name,
writes from offset 0 and truncates to what it wrote (``StagingFile.finish``), so no byte of
the earlier upload survives into the new one.

A spare still holds an earlier upload's bytes (stored, deduplicated or refused), in the private
staging folder, for at most SPARE_IDLE_SECONDS: a reaper thread removes spares nobody took by
then. That is far inside the default GC grace period (a day), so a spare does not keep content
GC has collected; only a grace period set under SPARE_IDLE_SECONDS lets a spare outlive a
collected blob, by those few seconds. Spares left by a process that
exits without its atexit hook (SIGKILL, OOM) are removed by ``clean_staging`` like its upload
files; a disk that fills up drops every spare of the folder (``drop``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
from pathlib import Path

SPARE_PREFIX = "spare-"
# Spares per process and staging folder: one per upload a worker usually has in flight.
SPARE_FILES = 2
# Larger staging files are removed, not kept: their disk space is worth more than the time.
SPARE_MAX_BYTES = 32 * 1024 * 1024
# How long a spare may wait for the next upload before the reaper removes it.
SPARE_IDLE_SECONDS = 30.0


class SparePool:
    """The spare staging files of this process, newest last, per staging folder."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._spares: dict[str, list[tuple[str, float]]] = {}
        self._reaper: threading.Thread | None = None

    def take(self, directory: Path) -> str | None:
        """A spare of ``directory`` (its path), now the caller's; None if there is none."""
        with self._lock:
            kept = self._spares.get(str(directory))
            if not kept:
                return None
            path, _ = kept.pop()
            return path

    def keep(self, directory: Path, path: str, size: int, spare: str) -> bool:
        """Rename the finished staging file ``path`` to ``spare`` (a name in ``directory``);
        False if it should be removed instead (too large, enough spares, the rename failed)."""
        if size > SPARE_MAX_BYTES:
            return False
        with self._lock:
            kept = self._spares.setdefault(str(directory), [])
            if len(kept) >= SPARE_FILES:
                return False
            try:
                os.rename(path, spare)
            except OSError:
                return False
            kept.append((spare, time.monotonic()))
            if self._reaper is None:
                self._reaper = threading.Thread(
                    target=self._reap, name="staging-spares", daemon=True
                )
                self._reaper.start()
            self._wake.notify()
        return True

    def drop(self, directory: Path | None = None) -> None:
        """Remove the spares of ``directory`` (of every folder with None), now."""
        with self._lock:
            if directory is None:
                dropped = [p for kept in self._spares.values() for p, _ in kept]
                self._spares.clear()
            else:
                dropped = [p for p, _ in self._spares.pop(str(directory), [])]
        for path in dropped:
            _remove(path)

    def count(self, directory: Path) -> int:
        with self._lock:
            return len(self._spares.get(str(directory), []))

    def forget(self) -> None:
        """In a forked child: the parent's spares are the parent's (its reaper removes them)."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._spares = {}
        self._reaper = None

    def _reap(self) -> None:
        """Remove spares idle for SPARE_IDLE_SECONDS; the thread ends when none is left."""
        while True:
            with self._lock:
                now = time.monotonic()
                expired: list[str] = []
                oldest: float | None = None
                for kept in self._spares.values():
                    for path, since in list(kept):
                        if now - since >= SPARE_IDLE_SECONDS:
                            kept.remove((path, since))
                            expired.append(path)
                        elif oldest is None or since < oldest:
                            oldest = since
                if not expired and oldest is None:
                    self._reaper = None
                    return
                if not expired:
                    assert oldest is not None
                    self._wake.wait(timeout=SPARE_IDLE_SECONDS - (now - oldest))
                    continue
            for path in expired:
                _remove(path)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


SPARES = SparePool()
os.register_at_fork(after_in_child=SPARES.forget)
atexit.register(SPARES.drop)
