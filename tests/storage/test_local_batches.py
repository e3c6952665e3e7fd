"""LocalBlobStore.durable_batch: moves made inside the block become durable when it ends (each
touched directory synced once, or one syncfs per filesystem for many), never later than a caller
that records them can see, and a move across filesystems still makes its copy durable before the
source goes. delete_many / set_tier_many: per-blob answers, the ``before`` check, errors kept to
their blob; deferred_pruning: emptied directories gone by the end of the block, not before."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import app.storage.local as local
import app.storage.local_fs as local_fs
from app.storage import LocalBlobStore, NotFound, StorageError, keys
from app.storage.base import durable_batch


def originals(store: LocalBlobStore, n: int) -> list[str]:
    made = []
    for i in range(n):
        data = f"blob {i}".encode()
        key = keys.original_key(hashlib.sha256(data).hexdigest())
        store.put_bytes(key, data)
        made.append(key)
    return made


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path]]:
    """What was made durable, in order: ("fsync", directory) or ("syncfs", path)."""
    seen: list[tuple[str, Path]] = []
    real = local_fs.fsync_dir

    def fsync_dir(path: Path) -> None:
        real(path)
        seen.append(("fsync", Path(path)))

    def syncfs(fd: int) -> int:
        seen.append(("syncfs", Path(os.readlink(f"/proc/self/fd/{fd}"))))
        return 0

    monkeypatch.setattr(local_fs, "fsync_dir", fsync_dir)
    monkeypatch.setattr(local_fs, "SYNCFS", syncfs)
    return seen


def test_moves_in_a_batch_are_synced_once_per_directory_at_its_end(
    local_store: LocalBlobStore, synced: list[tuple[str, Path]]
) -> None:
    moved = originals(local_store, 3)
    synced.clear()
    with local_store.durable_batch():
        for key in moved:
            local_store.set_tier(key, "cold")
        assert synced == []  # nothing yet: the caller records the moves only after the block
    assert local_store.cold_root is not None
    dirs = [path for kind, path in synced if kind == "fsync"]
    assert len(dirs) == len(set(dirs))  # each once
    for key in moved:
        assert (local_store.cold_root / keys.relative_path(key)).parent in dirs
        # the emptied hot directory was pruned: its nearest survivor carries the change
        hot_dir = (local_store.root / keys.relative_path(key)).parent
        assert not hot_dir.exists()
        assert any(hot_dir.is_relative_to(d) for d in dirs)
    assert local_store.get_bytes(moved[0]) == b"blob 0"


def test_many_directories_take_one_syncfs_per_filesystem(
    local_store: LocalBlobStore, synced: list[tuple[str, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_fs, "SYNCFS_ABOVE", 2)
    moved = originals(local_store, 4)
    synced.clear()
    with local_store.durable_batch():
        for key in moved:
            local_store.set_tier(key, "cold")
    assert [kind for kind, _ in synced] == ["syncfs"]  # root and cold_root: one filesystem


def test_without_a_batch_every_move_is_synced_before_it_returns(
    local_store: LocalBlobStore, synced: list[tuple[str, Path]]
) -> None:
    (key,) = originals(local_store, 1)
    synced.clear()
    local_store.set_tier(key, "cold")
    assert [kind for kind, _ in synced] == ["fsync", "fsync"]  # target and source directory


def test_a_failed_sync_at_the_end_of_a_batch_is_a_storage_error(
    local_store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    (key,) = originals(local_store, 1)

    def broken(path: Path) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(local_fs, "fsync_dir", broken)
    with pytest.raises(StorageError), local_store.durable_batch():
        local_store.set_tier(key, "cold")


def test_an_error_inside_a_batch_still_syncs_what_was_done_and_propagates(
    local_store: LocalBlobStore, synced: list[tuple[str, Path]]
) -> None:
    (key,) = originals(local_store, 1)
    synced.clear()
    with pytest.raises(KeyError), local_store.durable_batch():
        local_store.set_tier(key, "cold")
        raise KeyError("the caller failed")
    assert synced  # the move was made durable anyway


def test_nested_batches_sync_at_the_outer_end(
    local_store: LocalBlobStore, synced: list[tuple[str, Path]]
) -> None:
    a, b = originals(local_store, 2)
    synced.clear()
    with local_store.durable_batch():
        with local_store.durable_batch():
            local_store.set_tier(a, "cold")
        assert synced == []
        local_store.set_tier(b, "cold")
    assert synced


def test_a_move_across_filesystems_syncs_the_copy_before_the_source_goes(
    local_store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    (key,) = originals(local_store, 1)
    events: list[str] = []
    real_fsync = local_fs.fsync_dir
    real_unlink = Path.unlink

    def rename(src: Any, dst: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def fsync_dir(path: Path) -> None:
        real_fsync(path)
        events.append(f"fsync {Path(path).name}")

    def unlink(self: Path, missing_ok: bool = False) -> None:
        real_unlink(self, missing_ok=missing_ok)
        events.append(f"unlink {self.name}")

    monkeypatch.setattr(local.os, "rename", rename)
    monkeypatch.setattr(local_fs, "fsync_dir", fsync_dir)
    monkeypatch.setattr(Path, "unlink", unlink)
    digest = keys.hex_of(key)
    with local_store.durable_batch():
        local_store.set_tier(key, "cold")
        # inside the batch: the copy's directory is synced at once, before the unlink
        assert events == [f"fsync {digest[2:4]}", f"unlink {digest}"]
    assert local_store.info(key).storage_class == "COLD"


def test_stores_without_batches_get_a_block_that_does_nothing() -> None:
    class Remote:
        pass

    with durable_batch(Remote()):
        pass


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("workers", [1, 4])
def test_delete_many_deletes_and_prunes_every_blob(local_store: LocalBlobStore, workers: int):
    made = originals(local_store, 12)
    absent = keys.original_key("f" * 64)
    done = local_store.delete_many([*made, absent], workers=workers)
    assert done == dict.fromkeys([*made, absent])  # None each: gone, or already absent
    assert list(local_store.root.iterdir()) == []  # fan-out directories pruned too


@pytest.mark.parametrize("workers", [1, 4])
def test_delete_many_stops_where_before_says_no(local_store: LocalBlobStore, workers: int):
    made = sorted(originals(local_store, 12))
    lock = threading.Lock()
    allowed: list[str] = []

    def before(key: str) -> bool:
        with lock:
            if len(allowed) >= 5:
                return False
            allowed.append(key)
            return True

    done = local_store.delete_many(made, before=before, workers=workers)
    assert set(done) == set(allowed) and len(allowed) == 5
    for key in made:
        assert local_store.exists(key) == (key not in allowed)
    if workers == 1:
        assert allowed == made[:5]  # one thread: in order


def test_delete_many_keeps_an_error_to_its_blob(local_store, monkeypatch):  # type: ignore[no-untyped-def]
    made = originals(local_store, 6)
    bad = local_store.root / keys.relative_path(made[2])
    real = os.unlink

    def unlink(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if os.fspath(path) == str(bad):
            raise OSError(errno.EACCES, "Permission denied")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(local.os, "unlink", unlink)
    done = local_store.delete_many(made, workers=3)
    assert isinstance(done[made[2]], StorageError)
    assert {k for k, exc in done.items() if exc is None} == set(made) - {made[2]}
    assert bad.exists()


def test_an_exception_in_before_stops_the_threads_and_is_raised(local_store: LocalBlobStore):
    made = originals(local_store, 20)

    def before(key: str) -> bool:
        raise KeyError("the caller failed")

    with pytest.raises(KeyError):
        local_store.delete_many(made, before=before, workers=4)
    assert all(local_store.exists(key) for key in made)


def test_set_tier_many_joins_the_callers_batch(local_store, synced):  # type: ignore[no-untyped-def]
    moved = originals(local_store, 5)
    absent = keys.original_key("e" * 64)
    synced.clear()
    with local_store.durable_batch():
        done = local_store.set_tier_many([*moved, absent], "cold", workers=3)
        assert synced == []  # the moves' syncs wait for the caller's block, as set_tier's do
    assert synced
    assert isinstance(done.pop(absent), NotFound)
    assert done == dict.fromkeys(moved)
    for key in moved:
        assert local_store.info(key).storage_class == "COLD"
    assert all_files(local_store.root) == []


def test_set_tier_many_without_a_batch_is_durable_when_it_returns(local_store, synced):  # type: ignore[no-untyped-def]
    moved = originals(local_store, 3)
    synced.clear()
    local_store.set_tier_many(moved, "cold", workers=2)
    assert synced  # synced before returning
    assert all(local_store.info(key).storage_class == "COLD" for key in moved)


def test_deferred_pruning_prunes_in_the_background_and_by_the_end(local_store, monkeypatch):  # type: ignore[no-untyped-def]
    made = originals(local_store, 8)
    release = threading.Event()
    real = local_fs.prune
    pruned: list[str] = []

    def slow_prune(directory: str, base: str) -> None:
        release.wait(10)
        real(directory, base)
        pruned.append(threading.current_thread().name)

    monkeypatch.setattr(local_fs, "prune", slow_prune)
    with local_store.deferred_pruning():
        local_store.delete_many(made[:4], workers=2)
        local_store.delete(made[4])
        local_store.set_tier_many(made[5:], "cold")
        # the blobs are gone (or moved) at once; their directories wait for the pruner
        assert all_files(local_store.root) == []
        assert pruned == [] and any(local_store.root.iterdir())
        release.set()
    assert list(local_store.root.iterdir()) == []  # the block ends with the tree pruned
    assert len(pruned) == 8 and set(pruned) == {"blob-prune"}
    assert all(local_store.info(key).storage_class == "COLD" for key in made[5:])


def test_a_move_recreates_a_target_directory_pruned_under_it(local_store, monkeypatch):  # type: ignore[no-untyped-def]
    (key,) = originals(local_store, 1)
    real = os.rename
    calls = []

    def rename(src, dst):  # type: ignore[no-untyped-def]
        calls.append(dst)
        if len(calls) == 1:  # another job prunes the fresh, empty target directory first
            os.rmdir(os.path.dirname(dst))
        return real(src, dst)

    monkeypatch.setattr(local.os, "rename", rename)
    local_store.set_tier(key, "cold")
    assert len(calls) == 2 and local_store.info(key).storage_class == "COLD"
