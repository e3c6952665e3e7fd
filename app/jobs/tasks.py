"""Job functions, run by RQ workers or the in-process runner.

RQ imports these by dotted name in a separate process, so they build their services from
settings on first use; the in-process runner hands them the app's own services instead.
"""

from __future__ import annotations

import threading
from typing import Any

_services: Any = None
_lock = threading.Lock()


def bind(services: Any) -> None:
    """Use these services (the in-process runner's app) instead of building new ones."""
    global _services
    _services = services


def services() -> Any:
    global _services
    with _lock:
        if _services is None:
            from app.container import build_services
            from app.settings import load

            _services = build_services(load(), jobs="none")
        return _services


def pregenerate(digest: str) -> int:
    """Make the configured common variants of new content; returns how many were made now."""
    return services().service.pregenerate(digest)


def promote(digest: str) -> bool:
    """Move a cold original that was just read (and its variants) back to the hot tier."""
    return services().service.promote(digest)


class LifecycleProblems(RuntimeError):
    """A lifecycle job found problems it could not fix: RQ records the job as failed."""


def _checked(result: Any) -> dict[str, Any]:
    if not result.ok:
        raise LifecycleProblems(result.summary())
    return result.as_dict()


# The lifecycle jobs, for RQ (``rq cron config/rq_cron.py``) and the in-process runner: the
# same functions as ``image-origin gc|reconcile|verify|tier``, with findings logged as events.
def gc(grace: int | None = None, confirm: bool = False, dry_run: bool = False) -> dict[str, Any]:
    from app.jobs.gc import run_gc

    return _checked(run_gc(services(), grace=grace, confirm=confirm, dry_run=dry_run))


def reconcile(
    grace: int | None = None, confirm: bool = False, dry_run: bool = False, storage: bool = True
) -> dict[str, Any]:
    from app.jobs.reconcile import run_reconcile

    result = run_reconcile(
        services(), grace=grace, confirm=confirm, dry_run=dry_run, storage=storage
    )
    return _checked(result)


def verify(sample: float | None = None, since: float | None = None) -> dict[str, Any]:
    from app.jobs.verify import run_verify

    return _checked(run_verify(services(), sample=sample, since=since))


def tier(after_days: float | None = None, dry_run: bool = False) -> dict[str, Any]:
    from app.jobs.tier import run_tier

    return _checked(run_tier(services(), after_days=after_days, dry_run=dry_run))


TASKS = {
    "pregenerate": pregenerate,
    "promote": promote,
    "gc": gc,
    "reconcile": reconcile,
    "verify": verify,
    "tier": tier,
}


def resolve(name: str) -> Any:
    return TASKS[name]
