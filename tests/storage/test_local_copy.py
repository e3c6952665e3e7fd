"""How the local store copies an upload in: in the kernel where it can, by hand where it cannot,
with the hash and the caller's check beside the copy and its fsync (``app.storage.local_fs``)."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path

import pytest

from app.storage import LocalBlobStore, keys
from app.storage import local_fs as fs

DATA = os.urandom(3 * 1024 * 1024 + 17)  # more than one fallback chunk, not a multiple of it


def copy(tmp_path: Path, data: bytes = DATA) -> bytes:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(data)
    with open(src, "rb") as s, open(dst, "wb") as d:
        assert fs.copy_contents(s.fileno(), d.fileno()) == len(data)
    return dst.read_bytes()


def test_kernel_copy(tmp_path: Path) -> None:
    assert copy(tmp_path) == DATA
    assert copy(tmp_path, b"") == b""


@pytest.mark.parametrize("code", [errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP])
def test_falls_back_where_the_kernel_will_not_copy(tmp_path: Path, monkeypatch, code: int) -> None:  # type: ignore[no-untyped-def]
    def refuse(*args: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    assert copy(tmp_path) == DATA


def test_falls_back_from_where_the_kernel_stopped(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real = os.copy_file_range
    calls = []

    def once_then_refuse(src: int, dst: int, count: int, off_src: int, off_dst: int) -> int:
        calls.append(off_src)
        if len(calls) > 1:
            raise OSError(errno.EXDEV, "cross-device")
        return real(src, dst, 1000, off_src, off_dst)

    monkeypatch.setattr(os, "copy_file_range", once_then_refuse)
    assert copy(tmp_path) == DATA
    assert calls == [0, 1000]


def test_without_copy_file_range(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delattr(os, "copy_file_range")
    assert copy(tmp_path) == DATA


def test_a_real_copy_error_is_raised(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def broken(*args: object) -> int:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "copy_file_range", broken)
    with pytest.raises(OSError) as info:
        copy(tmp_path)
    assert info.value.errno == errno.EIO


def test_sha256_of_a_file(tmp_path: Path) -> None:
    for data in (b"", DATA):
        path = tmp_path / "f"
        path.write_bytes(data)
        with open(path, "rb") as fh:
            assert fs.sha256_of(fh.fileno()) == hashlib.sha256(data).hexdigest()


def test_beside_runs_both_to_the_end_and_raises_after() -> None:
    finished = []

    def background() -> str:
        finished.append("background")
        return "b"

    assert fs.beside(background, lambda: "f") == ("b", "f")

    def failing_background() -> None:
        raise ValueError("background failed")

    def slow_foreground() -> None:
        threading.Event().wait(0.05)
        finished.append("foreground")

    with pytest.raises(ValueError, match="background failed"):
        fs.beside(failing_background, slow_foreground)
    assert finished == ["background", "foreground"]

    def slow_background() -> None:
        threading.Event().wait(0.05)
        finished.append("slow background")

    with pytest.raises(KeyError):
        fs.beside(slow_background, lambda: {}["missing"])
    assert finished[-1] == "slow background"  # ended before the error was raised


def test_put_file_stores_the_bytes_whichever_way_it_copies(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "staging"
    src.write_bytes(DATA)
    digest = hashlib.sha256(DATA).hexdigest()
    store = LocalBlobStore(tmp_path / "kernel")
    assert store.put_file(keys.original_key(digest), str(src), digest) is True
    monkeypatch.delattr(os, "copy_file_range")
    by_hand = LocalBlobStore(tmp_path / "by-hand")
    assert by_hand.put_file(keys.original_key(digest), str(src), digest) is True
    for each in (store, by_hand):
        assert each.get_bytes(keys.original_key(digest)) == DATA
