"""Cache hits of public variants, answered before Flask.

A variant already in the cache is most of what an origin serves, and Flask's handling of a
request (contexts, hooks, routing, a Response and its headers) was about half of a hit's CPU:
3,400 vs 6,100 req/s on 2 cores (`make bench` figure 2). So the first answer for a path goes
through Flask like every request; when it is a plain 200 of a public variant, its headers and
cache key are kept for that exact path. A later GET of the same path that carries nothing able
to change the answer is then made here: the same state checks as the view (``object_for_serving``:
404, 410, 403, integrity failure; ``record_access``), the same bytes from the same cache, the same
request metrics, a request id of its own. Everything else goes to Flask as before: a cache miss,
any failed check (Flask then gives the JSON error), If-None-Match, a query string, HEAD, a signed
or negotiated (``auto``) path, a path that is not exactly its raw form.

Only headers fixed by the path and the settings are replayed (ETag, Cache-Control, Content-Type,
Content-Security-Policy, nosniff); Content-Length is that of the bytes served.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from app import metrics
from app.http.observability import REQUEST_ID_HEADER, count_request, id_for
from app.http.serve import VARIANT_KEY_ENVIRON, VARIANT_RULE, VARIANT_WIDTH_RULE

MEMO_PATHS = 4096  # a few MB of header lists at most; the oldest path is forgotten first
_PER_REQUEST = frozenset({"x-request-id", "content-length"})

WsgiApp = Callable[[dict, Callable[..., Any]], Iterable[bytes]]
# content hash, cache key, replayed headers, route label
_Memo = tuple[str, str, tuple[tuple[str, str], ...], str]


class CachedHits:
    """WSGI middleware in front of the Flask app (``app.wsgi_app``)."""

    def __init__(self, app: WsgiApp, services: Any) -> None:
        self.app = app
        self.services = services
        self._memo: dict[str, _Memo] = {}  # by exact path
        self._lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if not _plain_variant_get(environ, path):
            return self.app(environ, start_response)
        memo = self._memo.get(path)
        if memo is not None:
            answer = self._answer(memo, environ, start_response)
            if answer is not None:
                return answer
        return self._through_flask(path, environ, start_response)

    def _answer(
        self, memo: _Memo, environ: dict, start_response: Callable[..., Any]
    ) -> list[bytes] | None:
        """The hit, or None when Flask must answer (a failed check, a cache miss)."""
        started = time.perf_counter()
        digest, key, headers, route = memo
        service = self.services.service
        try:
            obj = service.object_for_serving(digest)
        except Exception:  # noqa: BLE001 - Flask answers it, with the error document
            return None
        data = service.variants.cache.get(key)
        if data is None:
            return None
        service.record_access(obj)
        metrics.CACHE_LOOKUPS.labels(tier="cache").inc()
        metrics.FAST_HITS.inc()
        request_id = id_for(environ.get("HTTP_X_REQUEST_ID", ""))
        start_response(
            "200 OK",
            [*headers, ("Content-Length", str(len(data))), (REQUEST_ID_HEADER, request_id)],
        )
        count_request(route, "GET", 200, started)
        return [data]

    def _through_flask(
        self, path: str, environ: dict, start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        def remember(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            variant = environ.get(VARIANT_KEY_ENVIRON)
            if variant is not None and status.startswith("200 ") and exc_info is None:
                self._remember(path, variant, headers)
            return start_response(status, headers, exc_info)

        return self.app(environ, remember)

    def _remember(
        self, path: str, variant: tuple[str, str], headers: list[tuple[str, str]]
    ) -> None:
        if any(name.lower() == "vary" for name, _ in headers):
            return  # negotiated: the same path may be another variant for another client
        kept = tuple((name, value) for name, value in headers if name.lower() not in _PER_REQUEST)
        route = VARIANT_WIDTH_RULE if path.count("/") == 4 else VARIANT_RULE
        with self._lock:
            if path not in self._memo and len(self._memo) >= MEMO_PATHS:
                del self._memo[next(iter(self._memo))]
            self._memo[path] = (variant[0], variant[1], kept, route)


def _plain_variant_get(environ: dict, path: str) -> bool:
    """A GET whose answer only the path and the stored state decide."""
    return (
        environ.get("REQUEST_METHOD") == "GET"
        and not environ.get("QUERY_STRING")
        and "HTTP_IF_NONE_MATCH" not in environ
        and environ.get("RAW_URI", path) == path
        and 3 <= path.count("/") <= 4
        and not path.startswith("/s/")
        and "/auto/" not in path
    )
