"""Helpers for the data-lifecycle tests: uploads without HTTP, a controllable clock, paths of
blobs on the local store, and the CLI in-process (click's runner) or as real processes."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from app.cli import main
from app.imaging.variants import parse_variant
from app.variant_service import variant_storage_key
from tests import images
from tests.conftest import base_env
from tests.waiting import wait_stored  # noqa: F401 - re-exported for the lifecycle tests

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    """Time that moves only when told: lets a test pause a worker "past its lease"."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def content(seed: int, size: int = 48) -> bytes:
    return images.png(size, size, seed=seed, mode="RGB")


def ingest(services: Any, data: bytes, *, owner: str = "alice", private: bool = False) -> Any:
    """An upload through the service (what POST /v1/images does), from any thread."""
    staged = services.service.new_staging_file()
    try:
        staged.write(data)
        return services.service.ingest(staged, owner=owner, filename=None, private=private)
    finally:
        staged.discard()


def delete_all(services: Any, digest: str) -> None:
    for ref in services.meta.live_references(digest):
        services.service.delete(ref.owner, ref.id)


def make_variant(services: Any, digest: str, spec: str = "webp/high/160") -> str:
    """Render and store one variant; returns its storage key."""
    fmt, quality, width = spec.split("/")
    parsed = parse_variant(fmt, quality, width, services.settings)
    obj = services.meta.get_object(digest)
    services.service.get_variant(obj, parsed)
    key = variant_storage_key(digest, parsed, services.settings)
    wait_stored(services, digest, key)
    return key


def blob_path(data_dir: Path, digest: str, cold: bool = False) -> Path:
    base = data_dir / ("cold" if cold else "blobs")
    return base / "sha256" / digest[:2] / digest[2:4] / digest


def variant_files(data_dir: Path, digest: str, cold: bool = False) -> list[Path]:
    base = data_dir / ("cold" if cold else "blobs") / "variants" / digest[:2] / digest[2:4]
    d = base / digest
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def db(data_dir: Path) -> sqlite3.Connection:
    """A raw connection, for tests that damage the metadata on purpose."""
    conn = sqlite3.connect(data_dir / "metadata.db", isolation_level=None, timeout=15)
    conn.row_factory = sqlite3.Row
    return conn


def age(path: Path, seconds: float) -> None:
    """Make a file look ``seconds`` older (orphans are judged by their modification time)."""
    st = path.stat()
    os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


@pytest.fixture
def cli(data_dir: Path) -> Callable[..., Result]:
    """``cli("gc", "--grace", "0", env={...})``: the console script in this process."""

    def run(*args: str, env: dict[str, str] | None = None) -> Result:
        full = base_env(data_dir, **(env or {}))
        return CliRunner().invoke(main, list(args), env=full, catch_exceptions=False)

    return run


def spawn(data_dir: Path, *args: str, **env: str) -> subprocess.Popen:
    """The real console script in its own process."""
    script = Path(sys.executable).parent / "image-origin"
    full = {**os.environ, **base_env(data_dir, **env)}
    return subprocess.Popen(
        [str(script), *args],
        cwd=ROOT,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
