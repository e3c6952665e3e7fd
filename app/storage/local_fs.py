"""Filesystem durability and threading helpers for ``LocalBlobStore``.

Kept apart from the store so that ``local.py`` reads as what a blob store does (paths, atomic
installs, tiers) while this module holds how the kernel is asked to make it durable and how
batch work is spread over threads. The reasons for each choice (syncfs over many directory
fsyncs, threads for deletions, background pruning) are in ``app.storage.local``'s docstring;
tests patch ``fsync_dir``, ``SYNCFS``, ``SYNCFS_ABOVE`` and ``prune`` here to observe them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import itertools
import mmap
import os
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from app.storage.base import StorageError

T = TypeVar("T")


def _libc_syncfs() -> Callable[[int], int] | None:
    """syncfs(2) from the C library (Linux), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes = [ctypes.c_int]
    syncfs.restype = ctypes.c_int
    return syncfs


SYNCFS = _libc_syncfs()
#: A batch with more directories than this to make durable uses one syncfs per filesystem:
#: every fsync of a directory costs a cache flush of the device (~0.1 ms on a VM disk, more on
#: a busy one), a syncfs one journal commit and one flush whatever it covers. Below it, the
#: fsyncs are cheap and do not wait for other files' dirty data on the same filesystem.
SYNCFS_ABOVE = 32


def syncfs(path: str) -> None:
    """Make everything written to the filesystem holding ``path`` durable (syncfs(2)). A
    directory removed meanwhile is represented by its nearest surviving ancestor, which is on
    the same filesystem (a mount point cannot be removed)."""
    assert SYNCFS is not None
    fd = at_nearest_survivor(path, lambda at: os.open(at, os.O_RDONLY))
    try:
        if SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir_or_ancestor(path: str) -> None:
    """fsync ``path``, or, when it has been removed since (an emptied fan-out directory pruned),
    its nearest surviving ancestor: that is where the removal, and so every change made inside
    the removed directory, is recorded."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        at_nearest_survivor(path, fsync_dir)


def at_nearest_survivor(path: str, act: Callable[[str], T]) -> T:
    """``act(path)``, or ``act`` on the nearest ancestor of ``path`` that still exists: emptied
    fan-out directories are pruned while others work on them, and what happened inside one is
    recorded in the directory that held it. Raises when not even the root is there."""
    while True:
        try:
            return act(path)
        except (FileNotFoundError, NotADirectoryError):
            parent = os.path.dirname(path)
            if parent == path:
                raise
            path = parent


def each(
    keys_: Sequence[str],
    op: Callable[[str], None],
    before: Callable[[str], bool] | None,
    workers: int,
) -> dict[str, StorageError | None]:
    """``op(key)`` for each key, on up to ``workers`` threads taking the keys in order; see
    ``LocalBlobStore.delete_many`` for ``before`` and the answer. Anything but a StorageError
    (raised by ``before`` or ``op``) stops the rest and is raised here once all threads end."""
    done: dict[str, StorageError | None] = {}
    if workers <= 1 or len(keys_) <= 1:
        for key in keys_:
            if before is not None and not before(key):
                break
            try:
                op(key)
                done[key] = None
            except StorageError as exc:
                done[key] = exc
        return done
    positions = itertools.count()  # next() on it is atomic under the GIL
    stop = threading.Event()
    failures: list[BaseException] = []

    def work() -> None:
        while not stop.is_set():
            i = next(positions)
            if i >= len(keys_):
                return
            key = keys_[i]
            try:
                if before is not None and not before(key):
                    stop.set()
                    return
                op(key)
                done[key] = None
            except StorageError as exc:
                done[key] = exc
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                failures.append(exc)
                stop.set()
                return

    threads = [
        threading.Thread(target=work, name="blob-batch", daemon=True)
        for _ in range(min(workers, len(keys_)))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return done


def prune(directory: str, base: str) -> None:
    """Remove ``directory`` and its ancestors while they are empty, never ``base`` itself."""
    inside = base.rstrip(os.sep) + os.sep
    while directory != base and directory.startswith(inside):
        try:
            os.rmdir(directory)
        except OSError:
            return
        directory = os.path.dirname(directory)


class Pruner:
    """Background threads running ``prune`` for the directories handed to ``add``.

    Each thread has its own queue, chosen by the directory's parent: removing a directory
    holds its parent's lock for the whole removal (the discard included), so two threads on
    siblings would only wait for each other, and a job's directories come in hash order,
    siblings together."""

    def __init__(self, workers: int) -> None:
        self._queues: list[queue.SimpleQueue[tuple[str, str] | None]] = [
            queue.SimpleQueue() for _ in range(max(1, workers))
        ]
        self._threads = [
            threading.Thread(target=self._run, args=(q,), name="blob-prune", daemon=True)
            for q in self._queues
        ]
        for thread in self._threads:
            thread.start()

    def add(self, directory: str, base: str) -> None:
        shard = hash(os.path.dirname(directory)) % len(self._queues)
        self._queues[shard].put((directory, base))

    @staticmethod
    def _run(items: queue.SimpleQueue[tuple[str, str] | None]) -> None:
        while (item := items.get()) is not None:
            prune(*item)

    def close(self) -> None:
        """Return once every directory added so far has been pruned."""
        for items in self._queues:
            items.put(None)
        for thread in self._threads:
            thread.join()


# Errors from copy_file_range that mean "not here" (another filesystem on an old kernel, a
# filesystem without it, a seccomp filter), not "the copy failed": the copy goes on by hand.
_NO_KERNEL_COPY = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM}
)
_COPY_CHUNK = 1024 * 1024


def copy_contents(src_fd: int, dst_fd: int) -> int:
    """Copy everything in ``src_fd`` to ``dst_fd`` (both at offset 0); return the bytes copied.

    Why: ``copy_file_range(2)`` copies inside the kernel, so a 10 MB original is not read into
    Python and written back (2.7 against 8.5 ms here), and a filesystem that shares extents
    (XFS, btrfs) may not copy at all. Where it is not available the copy is made through a
    buffer from where the kernel stopped.
    """
    offset = 0
    kernel_copy = getattr(os, "copy_file_range", None)
    while kernel_copy is not None:
        try:
            copied = kernel_copy(src_fd, dst_fd, 1 << 30, offset, offset)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            break
        if copied == 0:
            return offset
        offset += copied
    while chunk := os.pread(src_fd, _COPY_CHUNK, offset):
        view = memoryview(chunk)
        while view:
            written = os.pwrite(dst_fd, view, offset)
            view = view[written:]
            offset += written
    return offset


def sha256_of(fd: int) -> str:
    """The SHA-256 of a whole file, hashed from a read-only mapping (no copy into Python).

    hashlib releases the GIL for the whole buffer, so this overlaps with other threads' work.
    """
    if os.fstat(fd).st_size == 0:
        return hashlib.sha256(b"").hexdigest()
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
        return hashlib.sha256(mapped).hexdigest()


U = TypeVar("U")


def beside(background: Callable[[], T], foreground: Callable[[], U]) -> tuple[T, U]:
    """Run ``background`` on a helper thread while ``foreground`` runs here; return both results.

    Both always run to their end; an error from either is raised after that (the foreground's
    first). For work that waits in the kernel or in C code without the GIL (hashing, copying,
    fsync), so that the two really overlap.
    """
    outcome: list[tuple[bool, object]] = []
    running = threading.Event()

    def run() -> None:
        running.set()
        try:
            outcome.append((True, background()))
        except BaseException as exc:  # handed to the caller below
            outcome.append((False, exc))

    helper = threading.Thread(target=run, name="storage-beside", daemon=True)
    helper.start()
    # Let the helper reach its blocking call before the foreground takes the GIL: a foreground
    # that holds it (a regex over 10 MB) would otherwise keep the helper from even starting
    # its fsync until it was done, and the two would run one after the other (11.6 ms).
    running.wait()
    try:
        result = foreground()
    finally:
        helper.join()
    ok, value = outcome[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value, result  # type: ignore[return-value]
