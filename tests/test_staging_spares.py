"""Spare staging files (app.staging_spares): a finished upload's file is written over by the next
upload instead of being removed and made again. What must hold: no byte of an earlier upload
ever reaches a later one, spares are few, small and short-lived, and nothing else changes."""

from __future__ import annotations

import errno
import hashlib
import io
import multiprocessing
import os
import time
from pathlib import Path

import pytest

import app.staging as staging_mod
import app.staging_spares as spares_mod
from app.errors import InsufficientStorage, PayloadTooLarge
from app.staging import CHUNK, HOST_TAG, StagingFile, clean_staging
from app.staging_spares import SPARE_FILES, SPARE_PREFIX, SPARES
from tests import images
from tests.conftest import auth
from tests.test_upload_api import blob_files, leftovers


def spares(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith(SPARE_PREFIX))


def stage(directory: Path, data: bytes, limit: int = 64 * 1024 * 1024) -> StagingFile:
    staged = StagingFile(directory, limit=limit)
    staged.copy_from(io.BytesIO(data))
    staged.finish()
    return staged


def test_a_smaller_upload_over_a_spare_holds_exactly_its_own_bytes(tmp_path: Path) -> None:
    big, small = os.urandom(3 * CHUNK + 11), os.urandom(CHUNK // 3)
    first = stage(tmp_path, big)
    first.discard()
    (spare,) = spares(tmp_path)
    inode = spare.stat().st_ino
    second = stage(tmp_path, small)
    # the spare itself was written over (same inode), under a new upload name
    assert os.stat(second.path).st_ino == inode and Path(second.path).name.startswith("upload-")
    assert spares(tmp_path) == []
    assert Path(second.path).read_bytes() == small
    assert second.sha256 == hashlib.sha256(small).hexdigest()
    second.discard()
    # and a bigger one after it: all of its bytes, nothing of the two before
    third = stage(tmp_path, big[::-1])
    assert Path(third.path).read_bytes() == big[::-1]
    third.discard()
    assert leftovers(tmp_path) == []


def test_only_finished_uploads_become_spares_and_never_more_than_the_bound(
    tmp_path: Path,
) -> None:
    finished = [stage(tmp_path, os.urandom(1000 + i)) for i in range(SPARE_FILES + 3)]
    refused = StagingFile(tmp_path, limit=CHUNK)
    with pytest.raises(PayloadTooLarge):
        refused.copy_from(io.BytesIO(os.urandom(2 * CHUNK)))
    unfinished = StagingFile(tmp_path, limit=CHUNK)  # a client that went away mid-body
    unfinished.write(b"partial")
    for staged in [refused, unfinished, *finished]:
        staged.discard()
    assert len(spares(tmp_path)) == SPARE_FILES == SPARES.count(tmp_path)
    assert leftovers(tmp_path) == []


def test_large_uploads_are_removed_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spares_mod, "SPARE_MAX_BYTES", 100_000)
    stage(tmp_path, os.urandom(100_001)).discard()
    assert list(tmp_path.iterdir()) == []
    stage(tmp_path, os.urandom(100_000)).discard()
    assert len(spares(tmp_path)) == 1


def test_idle_spares_are_removed_by_the_reaper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spares_mod, "SPARE_IDLE_SECONDS", 0.3)
    stage(tmp_path, os.urandom(5000)).discard()
    assert len(spares(tmp_path)) == 1
    deadline = time.monotonic() + 5
    while spares(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.iterdir()) == [] and SPARES.count(tmp_path) == 0


def test_a_spare_removed_from_under_the_pool_falls_back_to_a_new_file(tmp_path: Path) -> None:
    stage(tmp_path, os.urandom(5000)).discard()
    (spare,) = spares(tmp_path)
    spare.unlink()  # another host's clean_staging, say
    data = os.urandom(7000)
    staged = stage(tmp_path, data)
    assert Path(staged.path).read_bytes() == data
    staged.discard()
    assert leftovers(tmp_path) == []


def test_a_full_disk_drops_every_spare_of_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for staged in [stage(tmp_path, os.urandom(3000 + i)) for i in range(SPARE_FILES)]:
        staged.discard()  # finished side by side: one spare each
    assert len(spares(tmp_path)) == SPARE_FILES >= 2
    others = tmp_path / "other"
    stage(others, os.urandom(3000)).discard()

    class Full(io.RawIOBase):
        def __init__(self, fd: int) -> None:
            self.fd = fd

        def writable(self) -> bool:
            return True

        def write(self, data) -> int:  # type: ignore[no-untyped-def,override]
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            if not self.closed:
                os.close(self.fd)
                super().close()

    # Every spare of this folder is taken or dropped: the upload that hit the full disk
    # wrote over one of them, and the rest go with it.
    monkeypatch.setattr(staging_mod.os, "fdopen", lambda fd, mode: Full(fd))
    staged = StagingFile(tmp_path, limit=10 * CHUNK)
    with pytest.raises(InsufficientStorage):
        staged.copy_from(io.BytesIO(os.urandom(2 * CHUNK)))
    staged.discard()
    monkeypatch.undo()
    assert [p for p in tmp_path.iterdir() if p.name != "other"] == []
    assert len(spares(others)) == 1  # another folder (another disk) keeps its own


def test_clean_staging_removes_the_spares_of_processes_that_are_gone(tmp_path: Path) -> None:
    gone = multiprocessing.get_context("spawn").Process(target=int)
    gone.start()
    gone.join()
    dead = tmp_path / f"{SPARE_PREFIX}{HOST_TAG}-{gone.pid}-0123456789abcdef01234567"
    dead.write_bytes(b"an earlier upload")
    stage(tmp_path, os.urandom(2000)).discard()
    (own,) = [p for p in spares(tmp_path) if p != dead]
    assert clean_staging(tmp_path, older_than=3600) == 1
    assert spares(tmp_path) == [own]  # this process's spare is its own business
    assert clean_staging(tmp_path, older_than=0) == 1  # gunicorn's master, before any worker
    assert list(tmp_path.iterdir()) == []
    fresh = stage(tmp_path, b"after the spare went")  # the pool notices the file is gone
    assert Path(fresh.path).read_bytes() == b"after the spare went"
    fresh.discard()


def _take_in_child(directory: str, answer) -> None:  # type: ignore[no-untyped-def]
    answer.put(SPARES.take(Path(directory)))


def test_a_forked_process_does_not_inherit_the_spares(tmp_path: Path) -> None:
    stage(tmp_path, os.urandom(2000)).discard()
    ctx = multiprocessing.get_context("fork")
    answer = ctx.Queue()
    child = ctx.Process(target=_take_in_child, args=(str(tmp_path), answer))
    child.start()
    child.join(10)
    assert answer.get(timeout=5) is None
    assert len(spares(tmp_path)) == 1 == SPARES.count(tmp_path)


def test_uploads_through_the_api_store_exact_bytes_over_spares(client, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    bodies = [
        images.png(300, 200, seed=801) + os.urandom(2 * CHUNK),  # a PNG with trailing bytes
        images.jpeg(64, 48, seed=802),
        images.png(80, 60, seed=803),
        images.jpeg(400, 300, seed=804),
    ]
    for body in bodies:
        r = client.post("/v1/images", data=body, headers=auth())
        assert r.status_code == 201, r.json
        assert r.json["hash"] == hashlib.sha256(body).hexdigest()
        assert r.json["size"] == len(body)
        got = client.get(f"/{r.json['hash']}/original")
        assert got.status_code == 200 and got.data == body
    assert sorted(p.read_bytes() for p in blob_files(data_dir)) == sorted(bodies)
    assert len(spares(data_dir / "staging")) == 1  # one upload at a time: one spare
    assert leftovers(data_dir / "staging") == []


def test_discarding_twice_leaves_the_spare_to_the_pool(tmp_path: Path) -> None:
    staged = stage(tmp_path, os.urandom(4000))
    staged.discard()
    (spare,) = spares(tmp_path)
    data = os.urandom(5000)
    taker = stage(tmp_path, data)  # took the spare under a new name
    assert not spare.exists()
    staged.discard()  # again: must not touch what is now another upload's file
    assert Path(taker.path).read_bytes() == data
    taker.discard()
    assert len(spares(tmp_path)) == 1 and leftovers(tmp_path) == []
