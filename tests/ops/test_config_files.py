"""The shipped deployment files: nginx.conf (as shipped, by `nginx -t`), render.py, redis.conf (by a
real redis-server), ProxyFix trust, the Dockerfile's promises (no Docker engine here to build it).
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from app import create_app
from nginx.render import CONF, RenderError, body_limit, render
from tests.conftest import make_settings
from tests.servers import ManagedProcess, free_port, missing, nginx_binary, redis_binary, wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_nginx_conf_passes_nginx_t(tmp_path: Path) -> None:
    """Only the directories are moved (this machine has no /var/cache/nginx); listen 80, the
    upstream, the user and every other directive are tested as shipped."""
    binary = nginx_binary()
    if binary is None:
        missing("nginx not found (apt-get install nginx)")
    tmp_path.chmod(0o755)
    (tmp_path / "logs").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(state_dir=str(tmp_path), log_dir=str(tmp_path / "logs")))
    result = subprocess.run(
        [binary, "-t", "-p", f"{tmp_path}/", "-e", str(tmp_path / "logs" / "error.log"),
         "-c", str(conf), "-g", f"pid {tmp_path}/nginx.pid;"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_render_rewrites_host_values_and_fails_loudly() -> None:
    text = render(
        listen="127.0.0.1:9000",
        upstreams=["10.0.0.1:8080", "10.0.0.2:8080"],
        state_dir="/srv/edge/",
        log_dir="/srv/edge/logs",
        user="",
        max_body=body_limit(10 * 1024 * 1024),
    )
    assert "listen 127.0.0.1:9000 reuseport;" in text
    assert "server 10.0.0.1:8080 max_fails=3 fail_timeout=10s;" in text
    assert "server 10.0.0.2:8080 max_fails=3 fail_timeout=10s;" in text
    directives = "\n".join(line.split("#")[0] for line in text.splitlines())
    for shipped in ("127.0.0.1:8080", "/var/cache/nginx", "/var/log/nginx", "user www-data"):
        assert shipped not in directives
    assert "proxy_cache_path /srv/edge/image-origin " in text
    assert "client_max_body_size 11264k;" in text  # 10 MiB + 1 MiB multipart slack
    assert render() == CONF.read_text()
    with pytest.raises(RenderError):
        render("events {}\n", listen="8000")
    with pytest.raises(RenderError):
        render(upstreams=[])


def test_redis_conf_runs_with_lru_eviction(tmp_path: Path) -> None:
    binary = redis_binary()
    if binary is None:
        missing("redis-server not found")
    port = free_port()
    proc = ManagedProcess(
        [binary, str(ROOT / "config" / "redis.conf"), "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(tmp_path)],
        tmp_path / "redis.log",
    )  # fmt: skip
    try:

        def ask(*words: str) -> bytes:
            command = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(command.encode())
                return s.recv(4096)

        wait_for(lambda: ask("PING").startswith(b"+PONG"), timeout=20, what="redis-server")
        assert b"allkeys-lru" in ask("CONFIG", "GET", "maxmemory-policy")
        assert b"2147483648" in ask("CONFIG", "GET", "maxmemory")
    finally:
        proc.stop()


@pytest.mark.parametrize("trusted", [0, 1, 2])
def test_forwarded_headers_trusted_only_as_configured(tmp_path: Path, trusted: int) -> None:
    app = create_app(make_settings(tmp_path, trusted_proxies=trusted))
    try:
        r = app.test_client().get(
            "/v1/config",
            headers={
                "Host": "origin.internal:8080",
                "X-Forwarded-Host": "evil.example, cdn.example.com, edge.example.com",
                "X-Forwarded-Proto": "http, https, https",
            },
        )
        expected = {
            0: "http://origin.internal:8080",
            1: "https://edge.example.com",
            2: "https://cdn.example.com",
        }[trusted]
        assert r.json["cdn_base_url"] == expected
    finally:
        app.config["IMAGE_ORIGIN"].close()


def test_dockerfile_promises() -> None:
    docker = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in docker and "libmagic1" in docker
    assert "\nUSER image-origin\n" in docker and "useradd --system --uid 10001" in docker
    assert "HEALTHCHECK" in docker and "/healthz" in docker
    assert 'CMD ["gunicorn", "--config", "config/gunicorn.conf.py", "app.wsgi:app"]' in docker
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests", "var", "bench"} <= set(ignored)
