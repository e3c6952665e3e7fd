"""``image-origin gc | reconcile | verify | tier``: the data lifecycle from the command line.

Each prints its findings, a progress bar when stdout is a terminal, and one summary line, and
exits 0 on success, 1 when it found problems it could not fix (or could not finish), 2 when it
refused to start (a grace below the safety floor without ``--yes``). The same functions run as
RQ jobs (app.jobs.tasks). All are safe to re-run and to run on several nodes at once.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import click

from app.cli import _load, main

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_REFUSED = 2


class TerminalProgress:
    """click's progress bar, only when stdout is a terminal (never in logs or pipes)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._bar: Any = None

    def start(self, total: int) -> None:
        if sys.stdout.isatty() and total > 0:
            self._bar = click.progressbar(length=total, label=self.label, show_pos=True)
            self._bar.__enter__()

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def _services() -> Any:
    from app import logs
    from app.container import build_services

    settings = _load()
    logs.configure(settings.log_level)
    return build_services(settings, jobs="none")


def _run(name: str, job: Any, **options: Any) -> None:
    """Run ``job`` with a progress bar and printed findings; exit with the contract's code."""
    from app.jobs.common import GraceTooShort
    from app.jobs.gc import GcRefused
    from app.metadata import MetadataError
    from app.storage import StorageError

    services = _services()
    progress = TerminalProgress(name)
    verbose = options.pop("verbose", False)

    def report(line: str) -> None:
        click.echo(f"{name}: {line}")

    def detail(line: str) -> None:
        if verbose:
            click.echo(f"{name}: {line}")

    try:
        result = job(services, progress=progress, report=report, detail=detail, **options)
    except GraceTooShort as exc:
        progress.close()
        click.echo(str(exc), err=True)
        sys.exit(EXIT_REFUSED)
    except GcRefused as exc:
        progress.close()
        click.echo(str(exc), err=True)
        sys.exit(EXIT_PROBLEMS)
    except (MetadataError, StorageError) as exc:
        progress.close()
        click.echo(f"{name}: failed: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EXIT_PROBLEMS)
    finally:
        services.close()
    progress.close()
    click.echo(result.summary())
    sys.exit(EXIT_OK if result.ok else EXIT_PROBLEMS)


_grace = click.option(
    "--grace",
    type=click.IntRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Override IMAGE_ORIGIN_GC_GRACE_SECONDS. Below 60 s needs --yes.",
)
_yes = click.option("--yes", is_flag=True, help="Confirm a --grace below the 60 s safety floor.")
_dry_run = click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
_batch = click.option(
    "--batch",
    type=click.IntRange(1, 10000),
    default=500,
    show_default=True,
    help="Rows per metadata batch (memory stays bounded by this).",
)
# gc and tier: larger batches write fewer database pages per row and sync less often (see
# app.jobs.common.BULK_BATCH).
_bulk_batch = click.option(
    "--batch",
    type=click.IntRange(1, 10000),
    default=2000,
    show_default=True,
    help="Rows per metadata batch (memory stays bounded by this).",
)
_verbose = click.option("-v", "--verbose", is_flag=True, help="Print every object handled.")


@main.command()
@_grace
@_yes
@_dry_run
@_bulk_batch
@_verbose
def gc(grace: int | None, yes: bool, dry_run: bool, batch: int, verbose: bool) -> None:
    """Delete content with no references once its grace period is over.

    Per object: claim it with a lease (re-checking ref_count = 0 and the grace in the same
    statement), then delete cache entries, stored variants, the original and the rows,
    renewing the lease before each deletion. Refuses to run while reconcile has found
    unreviewed damage.
    """
    from app.jobs.gc import run_gc

    # --yes confirms the number typed next to it, never a low setting found in the environment.
    confirm = yes and grace is not None
    _run("gc", run_gc, grace=grace, confirm=confirm, dry_run=dry_run, batch=batch, verbose=verbose)


@main.command()
@_grace
@_yes
@_dry_run
@_batch
@click.option(
    "--metadata-only",
    is_flag=True,
    help="Only fix ref_count drift and find references to missing objects (no storage reads).",
)
@click.option(
    "--ack", "ack", multiple=True, metavar="HASH", help="Mark a finding as reviewed (repeatable)."
)
@click.option("--ack-all", is_flag=True, help="Mark every open finding as reviewed.")
@_verbose
def reconcile(
    grace: int | None,
    yes: bool,
    dry_run: bool,
    batch: int,
    metadata_only: bool,
    ack: tuple[str, ...],
    ack_all: bool,
    verbose: bool,
) -> None:
    """Fix ref_count drift, remove orphan blobs, and find missing blobs and objects.

    Orphans (blobs with no object row, left by crashes) are removed once older than the grace.
    Live objects whose blob is missing are marked and recorded; gc refuses to run until each
    finding is resolved (a re-upload of the same bytes repairs it) or acknowledged with --ack.
    """
    if ack or ack_all:
        from app.jobs.reconcile import acknowledge
        from app.storage import keys

        for digest in ack:
            if not keys.is_hex_digest(digest):
                raise click.BadParameter("must be 64 lowercase hex digits", param_hint="--ack")
        services = _services()
        try:
            count = acknowledge(services, None if ack_all else list(ack))
        finally:
            services.close()
        click.echo(f"reconcile: acknowledged {count} finding(s)")
        sys.exit(EXIT_OK)
    from app.jobs.reconcile import run_reconcile

    _run(
        "reconcile",
        run_reconcile,
        grace=grace,
        confirm=yes and grace is not None,
        dry_run=dry_run,
        storage=not metadata_only,
        batch=batch,
        verbose=verbose,
    )


@main.command()
@click.option(
    "--sample",
    type=click.FloatRange(0, 100, min_open=True),
    default=None,
    metavar="PERCENT",
    help="Check a random PERCENT of the originals (a different choice every run).",
)
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]),
    default=None,
    metavar="DATE",
    help="Only originals stored since DATE (UTC, e.g. 2026-01-31 or 2026-01-31T12:00:00).",
)
@click.option("--seed", default=None, hidden=True, help="Fix the sample's choice (tests).")
@_dry_run
@_batch
@_verbose
def verify(
    sample: float | None,
    since: datetime | None,
    seed: str | None,
    dry_run: bool,
    batch: int,
    verbose: bool,
) -> None:
    """Re-hash stored originals; print the hash of each that fails and take it out of service.

    Exits 1 if any original fails (or was marked by an earlier run) or is missing. With
    --dry-run, failures are reported but nothing is marked.
    """
    from app.jobs.verify import run_verify

    since_ts = None if since is None else since.replace(tzinfo=UTC).timestamp()
    _run(
        "verify",
        run_verify,
        sample=sample,
        since=since_ts,
        seed=seed,
        dry_run=dry_run,
        batch=batch,
        verbose=verbose,
    )


@main.command()
@click.option(
    "--after-days",
    type=click.FloatRange(min=0),
    default=None,
    metavar="DAYS",
    help="Override IMAGE_ORIGIN_TIER_AFTER_DAYS (0: everything not read since now).",
)
@_dry_run
@_bulk_batch
@_verbose
def tier(after_days: float | None, dry_run: bool, batch: int, verbose: bool) -> None:
    """Move originals (and their stored variants) not read for DAYS to the cold tier.

    S3: a copy onto itself with IMAGE_ORIGIN_COLD_STORAGE_CLASS; local disk: a move to
    IMAGE_ORIGIN_COLD_DIR. Also copies finished Glacier restores back to STANDARD.
    """
    from app.jobs.tier import run_tier

    _run("tier", run_tier, after_days=after_days, dry_run=dry_run, batch=batch, verbose=verbose)
