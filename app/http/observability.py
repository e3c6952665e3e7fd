"""Request ids and request metrics for every response.

- ``X-Request-ID``: a sane id from the proxy (nginx sets one) is kept, anything else is replaced
  by a fresh one; it is echoed on the response, so gunicorn's access log (see
  config/gunicorn.conf.py) and the client see the same id.
- ``image_origin_requests_total`` and ``image_origin_request_seconds`` are labelled with the
  matched URL rule (``/<digest>/<fmt>/<quality>``), never the raw path, so label cardinality is
  bounded by the number of routes; a request that matched no route is ``unmatched``.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid

from flask import Flask, Response, g, request

from app import metrics

REQUEST_ID_HEADER = "X-Request-ID"
# Letters, digits and a few separators, at most 128 characters: enough for UUIDs, nginx's
# $request_id and tracing ids; nothing that could break a log line or a header.
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


def request_id() -> str:
    """The current request's id (set before any view runs)."""
    return g.get("request_id") or _new_id()


def _new_id() -> str:
    return uuid.uuid4().hex


def _incoming_id() -> str:
    return id_for(request.headers.get(REQUEST_ID_HEADER, ""))


def id_for(incoming: str) -> str:
    """The id a request is known by: the proxy's when it is sane, else a fresh one."""
    return incoming if _SANE_ID.fullmatch(incoming) else _new_id()


def count_request(route: str, method: str, status: int, started: float | None) -> None:
    """The request metrics of one answer (also for answers made before Flask: cached_hits);
    no latency when the start was never recorded (a hook before ours failed)."""
    metrics.REQUESTS.labels(route=route, method=method, status=str(status)).inc()
    if started is not None:
        metrics.REQUEST_SECONDS.labels(route=route).observe(time.perf_counter() - started)


def route_label() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED


def init_app(app: Flask) -> None:
    """Register first, so the start time and id exist before any other hook can fail."""

    @app.before_request
    def _start() -> None:
        g.request_started = time.perf_counter()
        g.request_id = _incoming_id()

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = request_id()
        route = route_label()
        method = request.method if request.method in _METHODS else "OTHER"
        count_request(route, method, response.status_code, g.get("request_started"))
        return response


def refresh_gauges(services: object) -> None:
    """Gauges read at scrape time: the job queue depth (RQ's is shared by every node)."""
    jobs = getattr(services, "jobs", None)
    if jobs is None:
        return
    # A scrape must not fail because Redis is down: /readyz reports that.
    with contextlib.suppress(Exception):
        metrics.JOB_QUEUE_DEPTH.set(jobs.depth())
