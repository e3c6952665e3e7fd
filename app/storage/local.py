"""Local-disk BlobStore: one file per blob, fanned out by hash, written atomically.

Why this shape:
- Paths come only from ``keys.relative_path`` after ``keys.validate``, so no request input can
  name a file outside the store.
- A write goes to a temporary file beside its target, is fsynced, then installed with
  ``os.link`` (originals: never clobbers, so two racing uploads of the same content cannot
  corrupt each other) or ``os.replace`` (variants: deterministic, overwrite is fine), and the
  directory is fsynced. A reader therefore sees either no file or the whole file.
- Batches: inside ``durable_batch()`` the directory fsyncs of moves are made when the block
  ends instead of after every move: once per directory, or, for many directories on Linux, one
  ``syncfs(2)`` per filesystem (one journal commit and one cache flush instead of one each per
  directory, the trade PostgreSQL offers as ``recovery_init_sync_method=syncfs``). Jobs moving
  thousands of blobs use it and commit the metadata that records the moves only after the
  block; a move across filesystems still fsyncs its target directory before the source is
  unlinked, inside a batch or not.
- Many blobs at once: ``delete_many`` and ``set_tier_many`` spread the blobs of one call over a
  few threads. Each blob gets exactly what ``delete`` or ``set_tier`` does to it; only the
  waiting overlaps. It is the kernel that waits: removing a file (or an emptied fan-out
  directory) frees its blocks, and on a filesystem mounted with ``discard`` (the usual VM disk)
  that is a synchronous TRIM to the device, a fraction of a millisecond to several
  milliseconds each, which dominated a GC of 100,000 tiny originals run one call at a time.
  The threads hold no lock of ours: every step is one atomic system call on its own path, as
  it is when several gunicorn workers and jobs use the same store.
- Pruning later: removing an emptied fan-out directory costs more than removing the blob (on
  such a disk, two to three times as much, and the device takes these one at a time), and
  nothing depends on when it happens. Inside ``deferred_pruning()`` the directories that
  deletions and moves leave empty are removed by background threads while the job goes on
  with its metadata, and the block ends once they all are: the tree then is what it would
  have been. A write racing a removal already copes (``_write_temp`` and ``_move`` re-create
  a directory pruned under them), as with the other processes sharing the store.
- Tiering: an optional ``cold_root`` (usually a cheaper, slower disk) holds cold blobs under the
  same relative paths. Cold blobs stay directly readable (like S3 GLACIER_IR, not an archive), so
  ``open`` never raises ArchivedError here. ``BlobInfo.storage_class`` is ``"STANDARD"`` for a
  blob under ``root`` and ``"COLD"`` for one under ``cold_root``; nothing else is stored.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from app.storage import keys
from app.storage import local_fs as fs
from app.storage.base import BlobInfo, NotFound, StorageError

HOT = "STANDARD"
COLD = "COLD"
TIERS = ("hot", "cold")
CHUNK = 1024 * 1024
TMP_MARK = ".tmp-"
_HEX_PART = re.compile(r"[0-9a-f]*\Z")
#: Threads one ``delete_many`` call spreads its blobs over: removing a file waits on the device
#: (a discard) after the directory lock is released, so several removals overlap; each costs
#: about 10 us of Python under the GIL, which stays small on a 2-core machine.
DELETE_WORKERS = 8
#: Threads of one ``set_tier_many`` call: a rename does not wait on the device (the emptied
#: directory's removal does, see ``deferred_pruning``), so more threads only contend for the
#: GIL and for the parent directories' locks (measured: 1-2 best, 8 twice as slow).
MOVE_WORKERS = 2
#: Threads removing emptied directories inside ``deferred_pruning``: a removal holds its
#: parent's lock while the device discards, so threads help only on different parents.
PRUNE_WORKERS = 3


def path_prefix(key_prefix: str) -> str | None:
    """The longest relative-path prefix that every key starting with ``key_prefix`` maps under.

    Lets ``iter_blobs`` walk (or list) only the part of the tree that can match. ``""`` means
    "everything"; None means no key can start with ``key_prefix``. Callers still filter each
    key with ``startswith``, so this only has to be a safe over-approximation.
    """
    for key_head, dir_head in (("sha256:", "sha256/"), ("variant:", "variants/")):
        if key_head.startswith(key_prefix):
            return "" if key_prefix != key_head else dir_head
        if key_prefix.startswith(key_head):
            rest = key_prefix[len(key_head) :]
            hex_part = rest[:64]
            if not _HEX_PART.match(hex_part):
                return None
            if len(hex_part) < 4:
                return dir_head + (f"{hex_part[:2]}/" if len(hex_part) >= 2 else "")
            return f"{dir_head}{hex_part[:2]}/{hex_part[2:4]}/{rest}"
    return None


def _os_error(action: str, key: str, exc: OSError) -> StorageError:
    return StorageError(f"local store: cannot {action} {key}: {exc.strerror or exc}")


class _AlongsideFailed(Exception):
    """Carries an error of ``put_file``'s ``alongside`` past the store's own OSError mapping."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error

    @classmethod
    def run(cls, work: Callable[[], object]) -> object:
        try:
            return work()
        except Exception as exc:
            raise cls(exc) from exc


class LocalBlobStore:
    """BlobStore on a local directory; see the module docstring for layout and tiers."""

    #: What ``info().storage_class`` reports for a cold blob; same attribute as S3BlobStore's,
    #: so callers can tell "cold" without knowing the backend.
    cold_storage_class = COLD

    def __init__(self, root: str | Path, cold_root: str | Path | None = None) -> None:
        self.root = Path(root).absolute()
        self.cold_root = Path(cold_root).absolute() if cold_root is not None else None
        # The same as plain strings: the batch paths build one path per blob and pathlib's
        # parsing was a good part of a large GC's time.
        self._root_s = str(self.root)
        self._cold_s = str(self.cold_root) if self.cold_root is not None else None
        self._batch = threading.local()  # .dirs: directories to fsync when the batch ends
        # Best effort, so a fresh install answers ping; a failure shows up in ping instead.
        for base in (self.root, self.cold_root):
            if base is not None:
                with contextlib.suppress(OSError):
                    base.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalBlobStore(root={str(self.root)!r}, cold_root={self.cold_root!s})"

    # --- durability batches -----------------------------------------------------------------
    @contextlib.contextmanager
    def durable_batch(self) -> Iterator[None]:
        """Defer the directory fsyncs of the moves this thread makes inside the block (its
        ``set_tier_many`` calls included, whichever threads do those moves) to its end, one
        per directory, and raise StorageError there if one fails.

        What a move guarantees is unchanged: the blob is readable at every moment and after a
        crash from one place or the other (a rename is atomic; a copy across filesystems is
        made durable before its source goes). Only the moment the move itself becomes durable
        changes, from the end of each move to the end of the block; so a caller that records
        moves (the tier) commits that record after the block. Nested blocks join the outer one.
        """
        if getattr(self._batch, "dirs", None) is not None:
            yield
            return
        self._batch.dirs = dirs = {}
        try:
            yield
        except BaseException:
            self._batch.dirs = None
            with contextlib.suppress(OSError):
                self._sync_all(dirs)
            raise
        self._batch.dirs = None
        try:
            self._sync_all(dirs)
        except OSError as exc:
            raise StorageError(
                f"local store: cannot sync directories: {exc.strerror or exc}"
            ) from exc

    @staticmethod
    def _sync_all(dirs: dict[str, None]) -> None:
        # A directory pruned since is represented by its nearest survivor, which many pruned
        # siblings share: resolve first, so each survivor is synced once.
        survivors: dict[str, int] = {}  # -> the device it is on
        for directory in dirs:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                found, device = fs.at_nearest_survivor(
                    directory, lambda at: (at, os.stat(at).st_dev)
                )
                survivors[found] = device
        if fs.SYNCFS is not None and len(survivors) > fs.SYNCFS_ABOVE:
            # syncfs covers every directory of its filesystem: one per filesystem.
            for directory in {dev: d for d, dev in survivors.items()}.values():
                fs.syncfs(directory)
            return
        for directory in survivors:
            fs.fsync_dir_or_ancestor(directory)

    @contextlib.contextmanager
    def deferred_pruning(self, workers: int = PRUNE_WORKERS) -> Iterator[None]:
        """Inside the block, the directories that this thread's deletions and moves (those of
        its ``delete_many`` and ``set_tier_many`` calls included) leave empty are removed by
        background threads; the block ends when they are all gone (module docstring). Nested
        blocks join the outer one."""
        if getattr(self._batch, "pruner", None) is not None:
            yield
            return
        self._batch.pruner = pruner = fs.Pruner(workers)
        try:
            yield
        finally:
            self._batch.pruner = None
            pruner.close()

    def _current_pruner(self) -> fs.Pruner | None:
        return getattr(self._batch, "pruner", None)

    def _current_batch(self) -> dict[str, None] | None:
        """The directories the calling thread's ``durable_batch`` will sync, or None."""
        return getattr(self._batch, "dirs", None)

    @staticmethod
    def _sync_dir(directory: str, dirs: dict[str, None] | None) -> None:
        """fsync now, or (``dirs``: a batch's) at the end of that ``durable_batch``."""
        if dirs is None:
            fs.fsync_dir(directory)
        else:
            dirs[directory] = None

    # --- paths ------------------------------------------------------------------------------
    def _hot(self, key: str) -> Path:
        return self.root / keys.relative_path(keys.validate(key))

    def _cold(self, key: str) -> Path | None:
        if self.cold_root is None:
            return None
        return self.cold_root / keys.relative_path(keys.validate(key))

    def _candidates(self, key: str) -> list[tuple[Path, str]]:
        """Where the blob may be, hot first; hot again last to cover a concurrent move back."""
        hot = self._hot(key)
        cold = self._cold(key)
        if cold is None:
            return [(hot, HOT)]
        return [(hot, HOT), (cold, COLD), (hot, HOT)]

    def _locate(self, key: str) -> tuple[Path, str, os.stat_result] | None:
        for path, storage_class in self._candidates(key):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            except NotADirectoryError:
                continue
            except OSError as exc:
                raise _os_error("stat", key, exc) from exc
            return path, storage_class, st
        return None

    # --- atomic writes ----------------------------------------------------------------------
    @staticmethod
    def _create_temp(target: Path, flags: int = os.O_WRONLY) -> tuple[int, Path]:
        """A fresh temp file beside ``target``: its descriptor and path."""
        for attempt in range(3):  # a concurrent delete may prune the fan-out dir under us
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{target.name}{TMP_MARK}{secrets.token_hex(8)}"
            try:
                return os.open(tmp, flags | os.O_CREAT | os.O_EXCL, 0o644), tmp
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _copy_temp(
        self,
        target: Path,
        source: str | Path,
        *,
        hashed: bool,
        alongside: Callable[[], object] | None = None,
    ) -> tuple[Path, str | None]:
        """Copy ``source`` to a fresh, fsynced temp file beside ``target``; return it and (with
        ``hashed``) the SHA-256 of the source as it was copied.

        Why not read, hash and write chunk by chunk, as before: for a 10 MB original that was
        read 1 + hash 5.5 + write 2 + fsync 4 ms one after another. Now the kernel copies
        (``fs.copy_contents``) and then fsyncs while a second thread hashes the source from a
        mapping: about the copy and the fsync, the hash beside them. The hash covers the same
        bytes as before (the source, read once more after the upload hashed it as it arrived).
        ``alongside`` fills the fsync's wait (for an upload, the marker check of a JPEG: 4 ms
        for 10 MB against a 4 to 5 ms fsync here).
        """
        fd, tmp = self._create_temp(target)
        try:
            with open(source, "rb") as src:

                def copy_and_sync() -> None:
                    fs.copy_contents(src.fileno(), fd)
                    if alongside is None:
                        os.fsync(fd)
                    else:
                        fs.beside(lambda: os.fsync(fd), lambda: _AlongsideFailed.run(alongside))

                if hashed:
                    digest, _ = fs.beside(lambda: fs.sha256_of(src.fileno()), copy_and_sync)
                else:
                    digest = None
                    copy_and_sync()
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(fd)
        return tmp, digest

    def _write_temp(self, target: Path, chunks: Iterator[bytes]) -> tuple[Path, str]:
        """Write ``chunks`` to a fresh temp file beside ``target``; return it and its SHA-256."""
        digest = hashlib.sha256()
        fd, tmp = self._create_temp(target)
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return tmp, digest.hexdigest()

    def put_file(
        self,
        key: str,
        path: str | Path,
        sha256_hex: str | None = None,
        *,
        alongside: Callable[[], object] | None = None,
    ) -> bool:
        """Copy ``path`` in under ``key``; False (and nothing written) if the key already exists.

        With ``sha256_hex`` the bytes are hashed as they are copied and a mismatch raises
        StorageError before anything is installed. ``alongside`` runs in this thread while the
        copy's fsync waits on the disk; if it raises, nothing is installed and its error is
        raised as it is (an OSError of the caller's is not taken for a storage failure).
        """
        target = self._hot(key)
        if self._locate(key) is not None:
            return False
        try:
            tmp, actual = self._copy_temp(
                target, path, hashed=sha256_hex is not None, alongside=alongside
            )
        except _AlongsideFailed as failed:
            raise failed.error from None  # the caller's own error, whatever its type
        except OSError as exc:
            raise _os_error("write", key, exc) from exc
        try:
            if actual is not None and actual != sha256_hex.lower():  # type: ignore[union-attr]
                raise StorageError(f"local store: sha256 mismatch for {key}; nothing stored")
            return self._install_no_clobber(tmp, target)
        except OSError as exc:
            raise _os_error("install", key, exc) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    @staticmethod
    def _install_no_clobber(tmp: Path, target: Path) -> bool:
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # Filesystem without hard links: the check-then-replace race only ever swaps in
            # identical content, because the key is the content's hash.
            if target.exists():
                return False
            os.replace(tmp, target)
        fs.fsync_dir(target.parent)
        return True

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        """Store ``data`` under ``key``, replacing any previous blob (hot or cold)."""
        target = self._hot(key)
        try:
            tmp, _ = self._write_temp(target, iter((bytes(data),)))
            try:
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            fs.fsync_dir(target.parent)
            cold = self._cold(key)
            if cold is not None:
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    cold.unlink()
        except OSError as exc:
            raise _os_error("write", key, exc) from exc

    # --- reads ------------------------------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        for path, _ in self._candidates(key):
            try:
                return open(path, "rb")  # the caller closes it
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise _os_error("open", key, exc) from exc
        raise NotFound(key)

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()

    def exists(self, key: str) -> bool:
        return self._locate(key) is not None

    def info(self, key: str) -> BlobInfo:
        found = self._locate(key)
        if found is None:
            raise NotFound(key)
        _, storage_class, st = found
        return BlobInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC), storage_class)

    def delete(self, key: str) -> None:
        self._delete(key, self._current_pruner())

    def _delete(self, key: str, pruner: fs.Pruner | None) -> None:
        rel = keys.relative_path(key)  # validates the key
        for base in (self._root_s, self._cold_s):
            if base is None:
                continue
            path = os.path.join(base, rel)
            try:
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise _os_error("delete", key, exc) from exc
            if pruner is None:
                fs.prune(os.path.dirname(path), base)
            else:
                pruner.add(os.path.dirname(path), base)

    def delete_many(
        self,
        keys_: Sequence[str],
        *,
        before: Callable[[str], bool] | None = None,
        workers: int = DELETE_WORKERS,
    ) -> dict[str, StorageError | None]:
        """``delete`` each key, spread over up to ``workers`` threads (module docstring).

        ``before(key)``, if given, is called in the deleting thread just before that key's
        deletion starts; when it answers False, that key and every key not started yet are
        left alone (a caller's lease check: GC). The answer holds each key whose deletion was
        attempted: None when it is gone (or was already), else its StorageError. Keys left
        alone are not in it. With ``workers=1`` everything runs in the calling thread, in order.
        """
        pruner = self._current_pruner()

        def delete(key: str) -> None:
            self._delete(key, pruner)

        return fs.each(list(dict.fromkeys(keys_)), delete, before, workers)

    def iter_blobs(self, prefix: str = "") -> Iterator[BlobInfo]:
        """Walk hot then cold; a blob present in both (mid-move) is reported once, as hot."""
        rel = path_prefix(prefix)
        if rel is None:
            return
        start = rel.rsplit("/", 1)[0] if "/" in rel else ""
        yield from self._walk(self.root, start, prefix, HOT, None)
        if self.cold_root is not None:
            yield from self._walk(self.cold_root, start, prefix, COLD, self.root)

    def _walk(
        self, base: Path, start: str, prefix: str, storage_class: str, shadow: Path | None
    ) -> Iterator[BlobInfo]:
        top = os.path.join(base, start) if start else str(base)
        if not os.path.isdir(top):
            return  # the usual answer for one object's variants: cheaper than os.walk's
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, base).replace(os.sep, "/")
            for name in sorted(filenames):
                if name.startswith(".") or TMP_MARK in name:
                    continue
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                key = keys.key_from_relative_path(rel)
                if key is None or not key.startswith(prefix):
                    continue
                if shadow is not None and (shadow / rel).is_file():
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue  # deleted or moved while we walked
                mtime = datetime.fromtimestamp(st.st_mtime, UTC)
                yield BlobInfo(key, st.st_size, mtime, storage_class)

    def ping(self) -> None:
        """Prove the root exists and takes a write (os.access is not enough for root)."""
        probe = self.root / f".ping{TMP_MARK}{secrets.token_hex(8)}"
        try:
            if not self.root.is_dir():
                raise StorageError(f"local store: {self.root} is not a directory")
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"local store: {self.root} not writable: {exc.strerror}") from exc

    # --- tiers ------------------------------------------------------------------------------
    def set_tier(self, key: str, tier: str) -> None:
        """Move the blob to ``tier`` ("hot": under root, "cold": under cold_root).

        Copy-then-remove keeps the blob readable throughout: for a moment it exists in both
        places and readers prefer the hot copy, which is identical.
        """
        self._set_tier(key, tier, self._current_batch(), self._current_pruner())

    def set_tier_many(
        self, keys_: Sequence[str], tier: str, *, workers: int = MOVE_WORKERS
    ) -> dict[str, StorageError | None]:
        """``set_tier`` each key, spread over up to ``workers`` threads (module docstring).

        The moves join the calling thread's ``durable_batch`` (or make one of their own, synced
        before this returns), so they are durable when the caller's block ends, as if the
        calling thread had made them. The answer: each key with None (moved, or already in
        ``tier``) or its StorageError (NotFound: in neither tier).
        """
        if tier not in TIERS:
            raise ValueError(f"tier must be 'hot' or 'cold', not {tier!r}")
        with self.durable_batch():
            dirs, pruner = self._current_batch(), self._current_pruner()

            def move(key: str) -> None:
                self._set_tier(key, tier, dirs, pruner)

            return fs.each(list(dict.fromkeys(keys_)), move, None, workers)

    def _set_tier(
        self, key: str, tier: str, dirs: dict[str, None] | None, pruner: fs.Pruner | None
    ) -> None:
        if tier not in TIERS:
            raise ValueError(f"tier must be 'hot' or 'cold', not {tier!r}")
        rel = keys.relative_path(key)  # validates the key
        if self._cold_s is None:
            raise StorageError("local store: no cold directory configured")
        hot, cold = os.path.join(self._root_s, rel), os.path.join(self._cold_s, rel)
        src, dst, src_base = (
            (hot, cold, self._root_s) if tier == "cold" else (cold, hot, self._cold_s)
        )
        if not os.path.isfile(src):
            if os.path.isfile(dst):
                return  # already there
            raise NotFound(key)
        try:
            self._move(src, dst, dirs)
        except FileNotFoundError as exc:
            if os.path.isfile(dst):
                return  # a concurrent move got there first
            raise NotFound(key) from exc
        except OSError as exc:
            raise _os_error("move", key, exc) from exc
        if pruner is None:
            fs.prune(os.path.dirname(src), src_base)
        else:
            pruner.add(os.path.dirname(src), src_base)

    def _move(self, src: str, dst: str, dirs: dict[str, None] | None) -> None:
        dst_dir, src_dir = os.path.dirname(dst), os.path.dirname(src)
        try:
            for attempt in range(3):  # a concurrent prune may remove dst_dir under us
                try:
                    os.mkdir(dst_dir)
                except FileExistsError:
                    pass
                except FileNotFoundError:
                    os.makedirs(dst_dir, exist_ok=True)
                try:
                    os.rename(src, dst)
                    break
                except FileNotFoundError:
                    if attempt == 2 or not os.path.exists(src) or os.path.isdir(dst_dir):
                        raise
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            with open(src, "rb") as fh:
                tmp, _ = self._write_temp(Path(dst), iter(lambda: fh.read(CHUNK), b""))
            try:
                shutil.copystat(src, tmp)
                os.replace(tmp, dst)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            fs.fsync_dir(dst_dir)  # never deferred: the copy must be durable before src goes
            Path(src).unlink()
        else:
            self._sync_dir(dst_dir, dirs)
        self._sync_dir(src_dir, dirs)
