"""Job runners: RQ when Redis is configured, an in-process background thread otherwise.

Both run the same functions from ``app.jobs.tasks`` by name, so a job behaves the same whichever
runner executes it. Jobs are idempotent: running one twice, or after a crash, is harmless.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

from app import metrics
from app.logs import event

QUEUE_NAME = "image-origin"


class JobRunner(Protocol):
    def enqueue(self, task: str, *args: Any) -> None: ...

    def depth(self) -> int: ...


class InlineRunner:
    """One daemon thread per process draining a bounded queue; a full queue drops the job
    (pre-generation is an optimisation: the variant is made on first request instead)."""

    def __init__(self, resolve: Callable[[str], Callable[..., Any]], maxsize: int = 1000) -> None:
        self._resolve = resolve
        self._queue: queue.Queue[tuple[str, tuple[Any, ...]]] = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()

    def enqueue(self, task: str, *args: Any) -> None:
        self._start()
        try:
            self._idle.clear()
            self._queue.put_nowait((task, args))
        except queue.Full:
            metrics.JOBS.labels(name=task, outcome="dropped").inc()
            event("job_dropped", level=logging.WARNING, task=task)

    def depth(self) -> int:
        return self._queue.qsize()

    def wait_idle(self, timeout: float) -> bool:
        """For tests and shutdown: block until every queued job has run."""
        return self._idle.wait(timeout)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="jobs", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            task, args = self._queue.get()
            try:
                self._resolve(task)(*args)
                metrics.JOBS.labels(name=task, outcome="ok").inc()
            except Exception as exc:
                metrics.JOBS.labels(name=task, outcome="failed").inc()
                event("job_failed", level=logging.WARNING, task=task, error=repr(exc))
            finally:
                self._queue.task_done()
                if self._queue.unfinished_tasks == 0:
                    self._idle.set()


class RQRunner:
    """Enqueue onto RQ; ``image-origin worker`` runs them. Retries with backoff on failure."""

    def __init__(self, connection: Any) -> None:
        from rq import Queue

        self.queue = Queue(QUEUE_NAME, connection=connection)

    def enqueue(self, task: str, *args: Any) -> None:
        from rq import Retry

        self.queue.enqueue(
            f"app.jobs.tasks.{task}",
            *args,
            retry=Retry(max=3, interval=[5, 30, 120]),
            job_timeout=600,
            result_ttl=3600,
            failure_ttl=7 * 86400,
        )

    def depth(self) -> int:
        return len(self.queue)
