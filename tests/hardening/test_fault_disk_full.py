"""Disk full on the staging folder: a clear 507, nothing half-written, and recovery.

Live: the staging folder of a real gunicorn is a small tmpfs (``mount -t tmpfs -o size=...``,
root only; under CI=true a refused mount fails the test, locally it skips). In-process: a fault
seam in place of the staging file's writer, for machines without mount rights and for the
failure modes a real disk shows only sometimes (the error surfacing at close, not at write).
"""

from __future__ import annotations

import errno
import io
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import app.staging as staging_mod
from tests import images
from tests.conftest import auth, in_ci
from tests.hardening.client import Live
from tests.hardening.conftest import assert_json_error
from tests.imaging.samples import noisy_rgb
from tests.live import gunicorn
from tests.test_upload_api import blob_files, leftovers

MIB = 1024 * 1024


@contextmanager
def tiny_staging(data_dir: Path, size: str) -> Iterator[Path]:
    staging = data_dir / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(staging)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs for the staging folder: {mounted.stderr.strip()}"
        if in_ci():
            pytest.fail(reason + " (required when CI=true: run as root)", pytrace=False)
        pytest.skip(reason)
    try:
        yield staging
    finally:
        subprocess.run(["umount", "-l", str(staging)], check=False)


def fill(staging: Path, leave: int) -> Path:
    """A file taking all but ``leave`` bytes of the staging filesystem (another upload)."""
    free = os.statvfs(staging).f_bavail * os.statvfs(staging).f_frsize
    filler = staging / "upload-filler"
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


def uploads(staging: Path, spares: bool = True) -> list[str]:
    """Staging entries but the filler; without ``spares``, the spares kept for the next
    uploads (app.staging_spares) are left out too."""
    entries = staging.iterdir() if spares else leftovers(staging)
    return sorted(p.name for p in entries if p.name != "upload-filler")


def test_upload_on_a_full_staging_disk_is_507_and_leaves_nothing(data_dir: Path) -> None:
    big = os.urandom(MIB)
    big = images.png(16, 16, seed=601) + big  # a PNG head: would be probed if it fit
    with tiny_staging(data_dir, "4m") as staging, gunicorn(data_dir, workers=1) as server:
        live = Live(server.url)
        assert live.upload(images.jpeg(seed=600)).status_code == 201
        blobs_before = blob_files(data_dir)
        filler = fill(staging, leave=256 * 1024)
        raw = live.post_alone("/v1/images", data=big, headers=auth())
        assert assert_json_error(raw, {507}) == "insufficient_storage"
        multipart = live.post_alone("/v1/images", files={"file": ("big.png", big)}, headers=auth())
        assert assert_json_error(multipart, {507}) == "insufficient_storage"
        # nothing half-written: no staging file, no blob, no row, no reference; and no spare
        # either (a full disk drops them, for the space they hold)
        assert uploads(staging) == []
        assert blob_files(data_dir) == blobs_before
        assert len(live.objects()) == 1 and len(live.references("alice-key-0123456789")) == 1
        assert live.get("/healthz").status_code == 200
        filler.unlink()
        assert live.upload(big[: 512 * 1024]).status_code in (201, 422)  # fits again
        assert live.upload(images.png(30, 30, seed=602)).status_code == 201
        assert uploads(staging, spares=False) == []
        logs = server.logs()
    assert "Traceback" not in logs, logs[-3000:]


def test_reading_a_large_original_with_a_full_staging_disk_is_503(data_dir: Path) -> None:
    buf = io.BytesIO()
    noisy_rgb(1900, 1800, noise=0.5).save(buf, "PNG")  # about 10 MB: over the 8 MiB spool
    large = buf.getvalue()
    with tiny_staging(data_dir, "12m") as staging, gunicorn(data_dir, workers=1) as server:
        live = Live(server.url)
        digest = live.upload(large).json()["hash"]
        fill(staging, leave=0)
        for path in (f"/{digest}/original", f"/{digest}/jpeg/low/160"):
            r = live.get(path)
            assert r.status_code == 503, (path, r.status_code)
            assert r.headers.get("Retry-After")


# --- the in-process fault seam ------------------------------------------------------------------
class FullDisk(io.RawIOBase):
    """A writer that takes ``room`` bytes, then fails like a full disk, also when closed with
    data still buffered (ENOSPC surfacing at flush instead of at write)."""

    def __init__(self, fd: int, room: int) -> None:
        self.fd = fd
        self.room = room
        self.pending = False

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[no-untyped-def,override]
        if len(data) > self.room:
            self.pending = True
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return os.write(self.fd, data)

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
            super().close()
            if self.pending:
                raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("transport", ["raw", "multipart"])
def test_full_disk_seam_507_and_staging_emptied(
    client, data_dir: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(staging_mod.os, "fdopen", lambda fd, mode: FullDisk(fd, room=300_000))
    body = images.png(16, 16, seed=603) + os.urandom(600_000)
    if transport == "raw":
        r = client.post("/v1/images", data=body, headers=auth())
    else:
        r = client.post(
            "/v1/images",
            data={"file": (io.BytesIO(body), "x.png")},
            headers=auth(),
            content_type="multipart/form-data",
        )
    assert assert_json_error(r, {507}) == "insufficient_storage"
    assert leftovers(data_dir / "staging") == []
    assert blob_files(data_dir) == []
    monkeypatch.undo()
    assert client.post("/v1/images", data=images.jpeg(seed=604), headers=auth()).status_code == 201
