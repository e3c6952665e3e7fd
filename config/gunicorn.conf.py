"""gunicorn settings for image-origin (``gunicorn -c config/gunicorn.conf.py app.wsgi:app``).

Workers and threads. Transforms (decode, resize, encode) are CPU-bound; Pillow releases the GIL
while it does them, but the Python around them does not, so one *process* per core is what uses
every core: ``workers = cores`` (GUNICORN_WORKERS). Each worker runs a few *threads* (gthread,
GUNICORN_THREADS, default 4) so the cheap requests - cache hits, originals streamed from storage,
API calls, health checks - are not queued behind a transform that takes hundreds of
milliseconds. Threads do not oversubscribe the cores because the app bounds transforms per
worker (IMAGE_ORIGIN_TRANSFORM_CONCURRENCY, default 2; past it a request gets 503 with
Retry-After instead of piling up), and variants are made once per cluster (single-flight lock)
and then served from Redis or the edge cache. More workers than cores only adds memory (each
holds decoded images) and context switches; fewer leaves cores idle under transform load.

Timeouts. ``timeout`` restarts a worker whose main loop is stuck for 60 s (gthread's heartbeat is
independent of busy request threads); the app gives up on a transform after
IMAGE_ORIGIN_TRANSFORM_TIMEOUT_SECONDS (30) well before that. ``graceful_timeout``: on SIGTERM
or a max_requests recycle, requests in flight get 30 s to finish. ``keepalive`` is longer than
nginx's upstream keepalive_timeout (60 s), so nginx always closes an idle connection first and
never sends a request on a socket gunicorn is closing.

Recycling. ``max_requests`` (GUNICORN_MAX_REQUESTS) with 10 % jitter restarts each worker after
about 100,000 requests, at different times, bounding slow growth (image libraries, fragmentation)
without a restart storm. Counters of recycled workers stay in /metrics (their files remain).

Logs. Access logs are one JSON object per line (JsonAccessLogger below) with the request id the
app returns in ``X-Request-ID``; tokens of signed URLs are redacted.

Metrics. ``/metrics`` aggregates every worker through prometheus-client's multiprocess mode: the
directory is (re)created in ``on_starting``, before any worker imports the app, and dead workers
are marked in ``child_exit``.
"""

import datetime
import json
import logging
import multiprocessing
import os
import shutil
import tempfile

from gunicorn.glogging import Logger

from app import gunicorn_errors
from app.settings import load
from app.signing import loggable_path
from app.staging import clean_staging

_settings = load()
# gunicorn's own refusals (request line or headers too large, bad chunking) answer JSON with
# nosniff like the app, not gunicorn's HTML page (app/gunicorn_errors.py).
gunicorn_errors.install()

bind = _settings.bind
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count()))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", 4))
timeout = 60
graceful_timeout = 30
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", 75))
# 2000 recycled a worker serving cache hits (2000+/s on 2 cores) every second or so, and each
# restart empties its in-process cache: 1,272 vs 2,145 req/s in `make bench` figure 2.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 100_000))
max_requests_jitter = max_requests // 10
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
# The app decides which X-Forwarded-* headers to believe (IMAGE_ORIGIN_TRUSTED_PROXIES and
# werkzeug's ProxyFix); gunicorn must not set the URL scheme from them on its own.
secure_scheme_headers: dict[str, str] = {}
# gunicorn's control socket defaults to one path per user; several instances on a host (nodes,
# tests) would fight over it, and nothing here uses it.
control_socket_disable = True
accesslog = "-"
errorlog = "-"
loglevel = _settings.log_level.lower()


class JsonAccessLogger(Logger):
    """One JSON object per request; never breaks on quotes or control characters in headers."""

    def access(self, resp, req, environ, request_time):  # noqa: ANN001 - gunicorn signature
        if not self.access_log_enabled:
            return
        try:
            status = resp.status
            if isinstance(status, str):
                status = status.split(None, 1)[0]
            raw = environ.get("RAW_URI") or environ.get("PATH_INFO") or ""
            path, _, query = raw.partition("?")
            request_id = "-"
            for name, value in resp.headers:
                if name.lower() == "x-request-id":
                    request_id = value
            record = {
                "ts": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
                "event": "request",
                "request_id": request_id,
                "remote": environ.get("REMOTE_ADDR", "-"),
                "method": environ.get("REQUEST_METHOD"),
                "path": loggable_path(path),  # a signed URL's token is a secret
                "query": query,
                "status": int(status) if str(status).isdigit() else status,
                "bytes": getattr(resp, "sent", None),
                "duration_ms": round(request_time.total_seconds() * 1000, 3),
                "ua": environ.get("HTTP_USER_AGENT"),
                "referer": environ.get("HTTP_REFERER"),
                "pid": os.getpid(),
            }
            self._emit(json.dumps(record, separators=(",", ":")))
        except Exception:  # noqa: BLE001 - a log line must never fail a request
            self.exception("access log failed")

    def _emit(self, line: str) -> None:
        """One write(2) per line, straight to the file or stream gunicorn opened for the access
        log: a LogRecord, its formatting and a flush per request were about a tenth of a cache
        hit's CPU (`make bench` figure 2: 3,100 -> 3,400 req/s). Each line is still written as
        its request finishes, never buffered. The handler's lock keeps a log reopen
        (SIGUSR1) from swapping the file mid-write; other handlers (syslog) go through logging.
        """
        data = None
        for handler in self.access_log.handlers:
            if type(handler) not in _PLAIN_HANDLERS:
                handler.handle(
                    self.access_log.makeRecord(
                        "gunicorn.access", logging.INFO, "", 0, line, None, None
                    )
                )
                continue
            data = data or (line + "\n").encode()
            handler.acquire()
            try:
                if handler.stream is not None:
                    _write_all(handler.stream.fileno(), data)
            finally:
                handler.release()


_PLAIN_HANDLERS = (logging.StreamHandler, logging.FileHandler)


def _write_all(fd: int, data: bytes) -> None:
    """A pipe (docker's stdout) may take a long line in parts."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


logger_class = JsonAccessLogger

_created_metrics_dir: str | None = None


def on_starting(server):  # noqa: ANN001 - gunicorn hook signature
    """Before any worker: clean staging left by a crash, and set up multiprocess metrics."""
    global _created_metrics_dir
    clean_staging(_settings.staging_dir)
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not metrics_dir:
        metrics_dir = tempfile.mkdtemp(prefix="image-origin-metrics-")
        _created_metrics_dir = metrics_dir
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    else:
        # Samples of a previous run would be counted again: start empty.
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.makedirs(metrics_dir, exist_ok=True)


def child_exit(server, worker):  # noqa: ANN001
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # noqa: ANN001
    if _created_metrics_dir:
        shutil.rmtree(_created_metrics_dir, ignore_errors=True)
