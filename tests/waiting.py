"""Waiting for work that finishes after the response (variants are stored after answering)."""

from __future__ import annotations

import time
from typing import Any


def wait_stored(services: Any, digest: str, key: str | None = None, timeout: float = 10) -> str:
    """Variants are stored after the response; wait for the blob and its row."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [v.key for v in services.meta.list_variants(digest)]
        found = [k for k in rows if key is None or k == key]
        if found and services.blobs.exists(found[0]):
            return found[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"variant of {digest} not stored after {timeout}s")
        time.sleep(0.01)
