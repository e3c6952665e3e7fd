"""A small HTTP client for the live tests: uploads, admin views, metrics, hash checks."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from typing import Any

import requests

from tests.conftest import ADMIN, ALICE, auth


class Live:
    def __init__(self, url: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.http.get(self.url + path, timeout=kw.pop("timeout", self.timeout), **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.http.post(self.url + path, timeout=kw.pop("timeout", self.timeout), **kw)

    def post_alone(self, path: str, **kw: Any) -> requests.Response:
        """A POST on a connection of its own, closed after the answer. For requests the server
        refuses before reading the whole body (401, 413, 507): gunicorn then drains at most
        64 KiB and closes the connection, though its answer said keep-alive, so a pooled
        connection would fail the *next* request."""
        headers = {**kw.pop("headers", {}), "Connection": "close"}
        timeout = kw.pop("timeout", self.timeout)
        return requests.post(self.url + path, headers=headers, timeout=timeout, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.http.delete(self.url + path, timeout=kw.pop("timeout", self.timeout), **kw)

    def upload(self, data: bytes, key: str = ALICE, private: bool = False) -> requests.Response:
        query = "?private=true" if private else ""
        return self.post(f"/v1/images{query}", data=data, headers=auth(key))

    def object(self, digest: str) -> requests.Response:
        return self.get(f"/v1/objects/{digest}", headers=auth(ADMIN))

    def objects(self) -> list[dict[str, Any]]:
        return self._pages("/v1/objects", ADMIN)

    def references(self, key: str) -> list[dict[str, Any]]:
        return self._pages("/v1/images", key)

    def _pages(self, path: str, key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(10_000):  # bounded: 1000 per page
            params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
            page = self.get(path, params=params, headers=auth(key))
            assert page.status_code == 200, page.text
            body = page.json()
            items += body["items"]
            cursor = body["next_cursor"]
            if cursor is None:
                return items
        raise AssertionError("paging did not end")

    def original_ok(self, digest: str, path: str | None = None) -> bool:
        """Fetch the original (or a signed ``path`` to it) and check it against its hash."""
        r = self.get(path or f"/{digest}/original")
        return r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == digest

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a counter's samples (over every label set matching ``labels``)."""
        text = self.get("/metrics").text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name):
                continue
            m = re.match(rf"{re.escape(name)}(?:{{(.*)}})? ([0-9.e+-]+)$", line)
            if not m:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(m.group(2))
        return total


def eventually(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """``check()`` until truthy, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except requests.RequestException as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
