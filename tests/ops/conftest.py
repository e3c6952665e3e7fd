"""Fixtures for the deployment tests: real gunicorn (shipped config), nginx, chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests import images
from tests.conftest import auth
from tests.live import LiveServer, gunicorn


@pytest.fixture(scope="module")
def module_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ops") / "data"
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def live(module_data_dir: Path) -> Iterator[LiveServer]:
    """One gunicorn (2 workers) per test module, on the shipped config/gunicorn.conf.py."""
    with gunicorn(module_data_dir, workers=2, threads=4) as server:
        yield server


def upload_via(base_url: str, data: bytes, key_headers: dict[str, str] | None = None, **form):  # type: ignore[no-untyped-def]
    response = requests.post(
        f"{base_url}/v1/images",
        files={"file": ("photo.jpg", data, "image/jpeg")},
        data=form,
        headers=key_headers or auth(),
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.json()


def sample_jpeg(seed: int = 7, width: int = 800, height: int = 600) -> bytes:
    return images.jpeg(width, height, seed=seed)
