"""A gunicorn worker killed with SIGKILL mid-upload and mid-transform.

Nothing partial is ever stored or served, no row points at a missing blob, and the staging file
the dead worker left is removed when the master's replacement worker starts (its create_app
removes staging files of processes that no longer exist); a whole gunicorn killed mid-upload
leaves a file that the next start removes (on_starting).
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from app.storage.local import LocalBlobStore
from tests import images
from tests.conftest import ADMIN, ALICE, auth
from tests.hardening import procs
from tests.hardening.client import Live, eventually
from tests.imaging.samples import noisy_rgb
from tests.live import gunicorn
from tests.test_upload_api import blob_files, staging_files

SENT_BEFORE_KILL = 512 * 1024
BIG_BODY = 3 * 1024 * 1024


def _begin_upload(url: str, multipart: bool) -> socket.socket:
    """An upload that sends its headers and the first 512 KiB of a 3 MiB body, then stalls."""
    host, port = url.removeprefix("http://").split(":")
    body_head = images.png(32, 32, seed=501) + os.urandom(SENT_BEFORE_KILL)
    if multipart:
        preamble = (
            b'--XYZ\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
            b"Content-Type: image/png\r\n\r\n"
        )
        body_head = preamble + body_head
        content_type = "multipart/form-data; boundary=XYZ"
    else:
        content_type = "application/octet-stream"
    head = (
        f"POST /v1/images HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {ALICE}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {BIG_BODY}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head + body_head)
    return sock


def _staged(data_dir: Path) -> list[Path]:
    return [p for p in staging_files(data_dir) if p.name.startswith("upload-")]


def _assert_consistent(live: Live, data_dir: Path) -> None:
    """Every row's blob exists and matches its hash; no blob without a row."""
    objects = live.objects()
    for obj in objects:
        assert live.original_ok(obj["hash"]), obj["hash"]
    assert {p.name for p in blob_files(data_dir)} == {o["hash"] for o in objects}


@pytest.mark.parametrize("multipart", [False, True], ids=["raw", "multipart"])
def test_worker_killed_mid_upload(data_dir: Path, multipart: bool) -> None:
    with gunicorn(data_dir, workers=1, threads=2) as server:
        live = Live(server.url)
        kept = live.upload(images.jpeg(120, 90, seed=500))
        assert kept.status_code == 201
        (worker,) = procs.workers(server.proc.pid, 1)
        sock = _begin_upload(server.url, multipart)
        try:
            staged = eventually(
                lambda: [p for p in _staged(data_dir) if p.stat().st_size > 0], 20, "staging"
            )
            assert f"-{worker}-" in staged[0].name  # staged by the worker we are about to kill
            procs.kill(worker)
            procs.wait_gone(worker)
            sock.settimeout(10)
            try:
                answer = sock.recv(1024)
            except (ConnectionResetError, TimeoutError):
                answer = b""
            assert answer == b"", answer  # the client saw the connection drop, no answer
        finally:
            sock.close()
        (respawned,) = procs.workers(server.proc.pid, 1)
        assert respawned != worker
        # the replacement worker removed what the dead one left, spares included
        eventually(
            lambda: [p for p in (data_dir / "staging").iterdir() if f"-{worker}-" in p.name] == [],
            20,
            "staging cleaned by the new worker",
        )
        _assert_consistent(live, data_dir)
        assert [r["id"] for r in live.references(ALICE)] == [kept.json()["id"]]

        # The crash window between a blob write and its row (orphan blob, no row): the next
        # upload of the same bytes records it, and the original is served intact.
        orphan = images.png(50, 40, seed=502)
        staging = data_dir / "orphan.png"
        staging.write_bytes(orphan)
        digest = hashlib.sha256(orphan).hexdigest()
        LocalBlobStore(data_dir / "blobs").put_file(f"sha256:{digest}", str(staging), digest)
        staging.unlink()
        assert live.object(digest).status_code == 404
        adopted = live.upload(orphan)
        assert adopted.status_code == 201 and adopted.json()["hash"] == digest
        _assert_consistent(live, data_dir)


def test_gunicorn_killed_mid_upload_is_cleaned_on_next_start(data_dir: Path) -> None:
    with gunicorn(data_dir, workers=1, threads=2) as server:
        sock = _begin_upload(server.url, multipart=False)
        try:
            eventually(lambda: _staged(data_dir), 20, "staging")
            os.killpg(server.proc.pid, signal.SIGKILL)  # master and workers: a machine crash
            server.proc.wait(timeout=10)
        finally:
            sock.close()
    assert _staged(data_dir), "the crash should have left a staging file"
    with gunicorn(data_dir, workers=1, threads=2) as server:
        assert _staged(data_dir) == []
        live = Live(server.url)
        assert live.objects() == []
        assert live.upload(images.jpeg(seed=503)).status_code == 201


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """24 MP of noise: a full-size AVIF of it takes a couple of seconds to encode."""
    buf = io.BytesIO()
    noisy_rgb(6000, 4000, noise=0.2).save(buf, "JPEG", quality=85)
    return buf.getvalue()


@pytest.mark.parametrize("locks", ["file", "redis"])
def test_worker_killed_mid_transform(data_dir: Path, big_jpeg: bytes, locks: str, request) -> None:  # type: ignore[no-untyped-def]
    env = {}
    if locks == "redis":
        # A lock held by a dead worker lives until its TTL; keep it short so the retry is quick.
        env = {
            "IMAGE_ORIGIN_REDIS_URL": request.getfixturevalue("redis_url"),
            "IMAGE_ORIGIN_LOCK_TIMEOUT_SECONDS": "5",
        }
    with gunicorn(data_dir, workers=1, threads=4, **env) as server:
        live = Live(server.url, timeout=120)
        digest = live.upload(big_jpeg).json()["hash"]
        path = f"/{digest}/avif/high"
        (worker,) = procs.workers(server.proc.pid, 1)
        outcome: dict[str, object] = {}

        def fetch() -> None:
            try:
                outcome["response"] = requests.get(server.url + path, timeout=60)
            except requests.RequestException as exc:
                outcome["error"] = exc

        started = time.monotonic()
        client = threading.Thread(target=fetch)
        client.start()
        # wait until the worker is busy with it (CPU time grows), then kill it mid-transform
        cpu = _cpu_ticks(worker)
        eventually(lambda: _cpu_ticks(worker) > cpu + 30, 20, "transform running")
        procs.kill(worker)
        client.join(timeout=60)
        assert "error" in outcome, f"the transform finished before the kill ({outcome})"
        assert time.monotonic() - started < 60
        procs.workers(server.proc.pid, 1)

        for variant in (data_dir / "blobs").rglob("*"):
            if (
                variant.is_file()
                and "variants" in variant.parts
                and not variant.name.startswith(".")
            ):
                with Image.open(variant) as im:
                    im.load()  # anything installed under a variant key is complete
        again = live.get(path)
        assert again.status_code == 200 and again.headers["Content-Type"] == "image/avif"
        with Image.open(io.BytesIO(again.content)) as im:
            im.load()
            assert max(im.size) == 4096
        assert live.get(path).content == again.content
        obj = live.get(f"/v1/objects/{digest}", headers=auth(ADMIN)).json()
        assert [v["key"].endswith("/avif/high") for v in obj["variants"]] == [True]
        _assert_consistent(live, data_dir)


def _cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])
