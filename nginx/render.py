"""Rewrite the host-specific values of nginx/nginx.conf for another host or a test run.

nginx/nginx.conf is the production config with literal values (listen 80, one gunicorn at
127.0.0.1:8080, state under /var/cache/nginx, logs under /var/log/nginx, user www-data, a 26m body
limit). This renders a copy with other values and fails loudly if the file no longer has what it
rewrites, so the config the tests run is the config that ships.

    python nginx/render.py --listen 0.0.0.0:8000 --upstream 10.0.0.11:8080 \\
        --upstream 10.0.0.12:8080 --state-dir /srv/nginx --log-dir /srv/nginx/logs > edge.conf
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CONF = Path(__file__).resolve().parent / "nginx.conf"
STATE_DIR = "/var/cache/nginx"
LOG_DIR = "/var/log/nginx"
MIB = 1024 * 1024
# The multipart envelope allowed on top of the upload limit (see client_max_body_size).
MULTIPART_SLACK = MIB


class RenderError(ValueError):
    """nginx.conf no longer contains what render() rewrites."""


def body_limit(max_upload_bytes: int) -> str:
    """client_max_body_size for an upload limit: the limit plus the multipart slack, in KiB."""
    return f"{-(-(max_upload_bytes + MULTIPART_SLACK) // 1024)}k"


def _sub_once(pattern: str, repl: str, text: str, what: str) -> str:
    """Replace the first match of ``pattern`` (its group 1 is kept in front) by ``repl``."""

    def keep_indent(match: re.Match[str]) -> str:
        return (match.group(1) if match.re.groups else "") + repl

    new, count = re.subn(pattern, keep_indent, text, count=1, flags=re.MULTILINE)
    if count != 1:
        raise RenderError(f"nginx.conf: cannot find {what}")
    return new


def render(
    text: str | None = None,
    *,
    listen: str | None = None,
    upstreams: list[str] | None = None,
    state_dir: str | None = None,
    log_dir: str | None = None,
    user: str | None = None,
    max_body: str | None = None,
) -> str:
    """nginx.conf with the given values; ``None`` keeps the shipped one. ``user=""`` drops the
    ``user`` directive (for an nginx not started as root)."""
    text = CONF.read_text() if text is None else text
    if listen is not None:
        text = _sub_once(r"^(\s*)listen\s+80\b", f"listen {listen}", text, "listen 80")
    if upstreams is not None:
        if not upstreams:
            raise RenderError("at least one upstream is needed")
        match = re.search(r"^(\s*)server 127\.0\.0\.1:8080( [^;]*);\n", text, flags=re.MULTILINE)
        if match is None:
            raise RenderError("nginx.conf: cannot find the upstream server line")
        indent, params = match.group(1), match.group(2)
        lines = "".join(f"{indent}server {u}{params};\n" for u in upstreams)
        text = text[: match.start()] + lines + text[match.end() :]
    if user is not None:
        repl = f"user {user};" if user else "# user: unchanged (not started as root)"
        text = _sub_once(r"^user www-data;", repl, text, "user www-data")
    if max_body is not None:
        text = _sub_once(
            r"client_max_body_size 26m;", f"client_max_body_size {max_body};", text, "body limit"
        )
    for old, new, what in ((STATE_DIR, state_dir, "state dir"), (LOG_DIR, log_dir, "log dir")):
        if new is None:
            continue
        if old not in text:
            raise RenderError(f"nginx.conf: cannot find the {what} {old}")
        text = text.replace(old + "/", new.rstrip("/") + "/")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", help="listen address, e.g. 8000 or 127.0.0.1:8000")
    parser.add_argument("--upstream", action="append", help="gunicorn host:port (repeatable)")
    parser.add_argument("--state-dir", help="cache and temp files (instead of /var/cache/nginx)")
    parser.add_argument("--log-dir", help="log files (instead of /var/log/nginx)")
    parser.add_argument("--user", help="worker user (instead of www-data); '' to drop it")
    parser.add_argument(
        "--max-upload-bytes", type=int, help="IMAGE_ORIGIN_MAX_UPLOAD_BYTES, sets the body limit"
    )
    parser.add_argument("--conf", type=Path, default=CONF, help="the config to render")
    args = parser.parse_args(argv)
    try:
        out = render(
            args.conf.read_text(),
            listen=args.listen,
            upstreams=args.upstream,
            state_dir=args.state_dir,
            log_dir=args.log_dir,
            user=args.user,
            max_body=body_limit(args.max_upload_bytes) if args.max_upload_bytes else None,
        )
    except RenderError as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
