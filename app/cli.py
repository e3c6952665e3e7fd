"""The ``image-origin`` console script: serving, migrations and operations."""

from __future__ import annotations

import os
import secrets
import sys

import click

from app import settings as settings_mod
from app.settings import Settings, SettingsError


def _load() -> Settings:
    try:
        return settings_mod.load()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """image-origin: content-addressed image storage and CDN origin."""


@main.command()
def migrate() -> None:
    """Apply pending metadata migrations (safe to run repeatedly)."""
    from app.container import build_services

    s = _load()
    services = build_services(s, migrate=False)
    from app.container import migrate_locked

    applied = migrate_locked(s, services.meta)
    click.echo(
        f"migrate: applied {len(applied)} migration(s)"
        + (f": {', '.join(applied)}" if applied else "")
    )


@main.command("dev-keys")
def dev_keys() -> None:
    """Make a dev API key and signing key in the data dir unless keys are configured."""
    s = _load()
    path = settings_mod.dev_keys_path(s.data_dir)
    if s.api_keys and s.signing_keys:
        return
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        api_key = "dev:" + secrets.token_urlsafe(24) + ":admin"
        signing = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f'# made by make run for local development\napi_keys = "{api_key}"\n')
            fh.write(f'signing_keys = "{signing}"\n')


@main.command()
@click.option("--workers", type=int, default=None, help="gunicorn workers (default: config)")
def serve(workers: int | None) -> None:
    """Start gunicorn with config/gunicorn.conf.py, printing the URL, key and a curl example."""
    s = _load()
    if not s.api_keys:
        raise click.ClickException(
            "no API keys: set IMAGE_ORIGIN_API_KEYS or run `image-origin dev-keys`"
        )
    url = f"http://{s.bind}"
    key = s.api_keys[0].key
    click.echo(f"image-origin listening on {url}  (data: {os.path.abspath(s.data_dir)})")
    if s.api_keys[0].owner == "dev":
        click.echo(f"dev API key: {key}")
    click.echo(
        f"try: curl -H 'Authorization: Bearer {key}' --data-binary @photo.jpg {url}/v1/images"
    )
    sys.stdout.flush()
    conf = os.path.join(os.path.dirname(os.path.dirname(__file__)), "config", "gunicorn.conf.py")
    args = ["gunicorn", "-c", conf, "app.wsgi:app"]
    if workers:
        args += ["--workers", str(workers)]
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    os.execv(gunicorn, args)  # noqa: S606 - replaces this process with gunicorn, fixed argv


@main.command("sign-url")
@click.argument("digest", metavar="HASH")
@click.option("--format", "fmt", required=True, help="jpeg, webp, avif, auto or original")
@click.option("--quality", default=None, help="a preset name such as high or low")
@click.option("--width", type=int, default=None, help="one of the configured widths")
@click.option("--expires-in", type=int, required=True, help="seconds the URL stays valid")
def sign_url(
    digest: str, fmt: str, quality: str | None, width: int | None, expires_in: int
) -> None:
    """Print a signed URL for HASH using the configured CDN base."""
    import time

    from app.errors import DomainError
    from app.imaging.variants import parse_variant
    from app.signing import UrlSigner, variant_path
    from app.storage import keys

    s = _load()
    if not keys.is_hex_digest(digest):
        raise click.BadParameter("must be 64 lowercase hex digits", param_hint="HASH")
    if not 0 < expires_in <= s.signed_url_max_seconds:
        raise click.BadParameter(
            f"must be 1..{s.signed_url_max_seconds}", param_hint="--expires-in"
        )
    if fmt == "original":
        if quality or width:
            raise click.UsageError("original takes no --quality or --width")
    else:
        if not quality:
            raise click.UsageError("--quality is required for a variant")
        try:
            parse_variant("jpeg" if fmt == "auto" else fmt, quality, _opt(width), s)
        except DomainError as exc:
            raise click.UsageError(exc.message) from None
    if not s.signing_keys:
        raise click.ClickException("no signing key: set IMAGE_ORIGIN_SIGNING_KEYS")
    expires_at = int(time.time()) + expires_in
    base = (s.cdn_base_url or f"http://{s.bind}").rstrip("/")
    path = variant_path(digest, fmt, quality, width)
    click.echo(base + UrlSigner(s.signing_keys).sign_path(path, expires_at))


def _opt(width: int | None) -> str | None:
    return None if width is None else str(width)


@main.command()
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
def worker(burst: bool) -> None:
    """Run background jobs from the RQ queue (needs IMAGE_ORIGIN_REDIS_URL)."""
    from rq import Worker

    from app.cache import redis_client
    from app.jobs.queue import QUEUE_NAME

    s = _load()
    if not s.redis_url:
        raise click.ClickException(
            "IMAGE_ORIGIN_REDIS_URL is not set: without Redis, jobs run inside the web workers"
        )
    connection = redis_client(s.redis_url, timeout=30)
    w = Worker([QUEUE_NAME], connection=connection)
    ok = w.work(burst=burst, with_scheduler=not burst)
    click.echo(f"worker: stopped after {w.successful_job_count} ok, {w.failed_job_count} failed")
    sys.exit(0 if ok or burst else 1)


# Commands defined next to the code they run; importing them registers them on ``main``:
# cli_data: copy-metadata; cli_ops: gc, reconcile, verify, tier.
from app import cli_data, cli_ops  # noqa: E402, F401

if __name__ == "__main__":  # pragma: no cover
    main()
