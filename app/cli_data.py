"""``image-origin copy-metadata``: move a SQLite store's metadata into PostgreSQL.

Registered onto the console script's group by the import at the bottom of app/cli.py. The
copying itself lives in app/metadata/copy.py (SQL stays in the metadata package).
"""

from __future__ import annotations

import sys

import click

from app.cli import _load, main


def _default_source() -> str | None:
    try:
        url = _load().resolved_database_url
    except click.ClickException:
        return None
    return url if url.startswith("sqlite:///") else None


def _default_target() -> str | None:
    try:
        url = _load().resolved_database_url
    except click.ClickException:
        return None
    return url if url.startswith(("postgresql://", "postgres://")) else None


@main.command("copy-metadata")
@click.option(
    "--from",
    "source",
    metavar="sqlite:///PATH",
    help="The SQLite store to copy (default: the data dir's, when DATABASE_URL is not set).",
)
@click.option(
    "--to",
    "target",
    metavar="postgresql://...",
    help="The PostgreSQL database to fill (default: IMAGE_ORIGIN_DATABASE_URL).",
)
@click.option(
    "--merge",
    is_flag=True,
    help="Add to a target that already holds metadata (rows already there are skipped).",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="Rows per batch; each batch is one transaction in the target.",
)
def copy_metadata(source: str | None, target: str | None, merge: bool, batch: int) -> None:
    """Copy objects, references, variant rows and findings from SQLite into PostgreSQL.

    Safe to run again: nothing is duplicated. The target is migrated first. Blobs are not
    copied: point the new nodes at the same storage (see the README).
    """
    from app.metadata.base import MetadataError
    from app.metadata.copy import copy_sqlite_to_postgres
    from app.metadata.postgres import PostgresMetadataStore

    source = source or _default_source()
    target = target or _default_target()
    if not source:
        raise click.UsageError("--from sqlite:///PATH is required")
    if not target or not target.startswith(("postgresql://", "postgres://")):
        raise click.UsageError("--to postgresql://... is required")
    store = PostgresMetadataStore(target, min_size=1, max_size=2)
    tty = sys.stdout.isatty()

    def progress(table: str, done: int) -> None:
        if tty:
            click.echo(f"\rcopy-metadata: {table}: {done} rows   ", nl=False)

    try:
        summary = copy_sqlite_to_postgres(
            source, store, merge=merge, batch=batch, progress=progress
        )
    except MetadataError as exc:
        if tty:
            click.echo()
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    if tty:
        click.echo()
    click.echo(summary.line())
    if summary.mismatched_after:
        raise click.ClickException(
            f"{summary.mismatched_after} objects in the target have a ref_count that differs "
            "from their live references; run `image-origin reconcile` against it"
        )
