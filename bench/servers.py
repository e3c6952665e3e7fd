"""The servers under test: image-origin (shipped gunicorn config), thumbor, nginx.

Each runs in its own process group on a free loopback port with its files under bench/.work/,
and is stopped by that group. Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WORK = BENCH / ".work"
PEER = BENCH / ".peer"
THUMBOR_VERSION = "7.8.0"
API_KEY = "bench-key-0123456789abcdef"
WORKERS = 2  # CPU-bound workers on both sides: one per core of the benchmark machine
# The servers run from the project's own venv, as deployed (the harness has its own: bench/env.py).
PROJECT_BIN = ROOT / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Process:
    """A server in its own process group, logging to a file, stopped by group."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (gunicorn's workers, thumbor's forked processes)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry))
    return sorted(out)


def wait_http(port: int, path: str, proc: Process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"server exited:\n{proc.tail()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            status = conn.getresponse().status
            conn.close()
            if status < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not answer {path}:\n{proc.tail()}")


# --- image-origin ------------------------------------------------------------------------------
@dataclass
class Ours:
    port: int
    data_dir: Path
    process: Process
    workers: list[int] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def ours_env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_ORIGIN_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        {
            "IMAGE_ORIGIN_DATA_DIR": str(data_dir),
            "IMAGE_ORIGIN_BIND": f"127.0.0.1:{port}",
            "IMAGE_ORIGIN_API_KEYS": f"bench:{API_KEY}:admin",
            "IMAGE_ORIGIN_SIGNING_KEYS": "bench-signing-secret-0123456789abcdef",
            "IMAGE_ORIGIN_PREGENERATE": "",
            "IMAGE_ORIGIN_MAX_PIXELS": "100000000",
            "IMAGE_ORIGIN_LOG_LEVEL": "WARNING",
            "GUNICORN_WORKERS": str(WORKERS),
        }
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def ours(name: str, **extra: str) -> Iterator[Ours]:
    """gunicorn with config/gunicorn.conf.py on a fresh data dir."""
    data_dir = WORK / "ours" / name
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    port = free_port()
    gunicorn = PROJECT_BIN / "gunicorn"
    argv = [str(gunicorn), "-c", str(ROOT / "config" / "gunicorn.conf.py"), "app.wsgi:app"]
    proc = Process(argv, data_dir.parent / f"{name}.log", ours_env(data_dir, port, **extra))
    server = Ours(port, data_dir, proc)
    try:
        wait_http(port, "/healthz", proc)
        deadline = time.monotonic() + 30
        while len(server.workers) < WORKERS and time.monotonic() < deadline:
            server.workers = children(proc.pid)
            time.sleep(0.05)
        yield server
    finally:
        proc.stop()


# --- thumbor -----------------------------------------------------------------------------------
def thumbor_bin() -> Path:
    return PEER / "venv" / "bin" / "thumbor"


def install_thumbor() -> str | None:
    """thumbor in its own venv under bench/.peer; None when ready, else why it is not."""
    venv = PEER / "venv"
    marker = venv / f".thumbor-{THUMBOR_VERSION}"
    if marker.exists() and thumbor_bin().exists():
        return None
    PEER.mkdir(parents=True, exist_ok=True)
    try:
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, f"thumbor=={THUMBOR_VERSION}"], check=True)
    except subprocess.CalledProcessError as exc:
        return f"pip install thumbor=={THUMBOR_VERSION} failed ({exc.returncode})"
    marker.touch()
    return None


THUMBOR_CONF = """\
# Written by bench/servers.py: file loader, file result storage, no original storage.
LOADER = 'thumbor.loaders.file_loader'
FILE_LOADER_ROOT_PATH = {root!r}
STORAGE = 'thumbor.storages.no_storage'
RESULT_STORAGE = 'thumbor.result_storages.file_storage'
RESULT_STORAGE_FILE_STORAGE_ROOT_PATH = {result!r}
RESULT_STORAGE_STORES_UNSAFE = True
ALLOW_UNSAFE_URL = True
QUALITY = 85
AVIF_SPEED = 8
MAX_PIXELS = 100000000
ALLOW_ANIMATED_GIFS = True
USE_GIFSICLE_ENGINE = False
"""


@dataclass
class Thumbor:
    port: int
    root: Path  # the file loader's root: put sources here
    result: Path
    process: Process
    workers: list[int] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def thumbor(name: str) -> Iterator[Thumbor]:
    base = WORK / "thumbor" / name
    shutil.rmtree(base, ignore_errors=True)
    root, result = base / "root", base / "result"
    root.mkdir(parents=True)
    result.mkdir()
    conf = base / "thumbor.conf"
    conf.write_text(THUMBOR_CONF.format(root=str(root), result=str(result)))
    port = free_port()
    argv = [str(thumbor_bin()), "-p", str(port), "-i", "127.0.0.1", "-c", str(conf)]
    argv += ["--processes", str(WORKERS), "-l", "warning"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_ORIGIN_")}
    proc = Process(argv, base / "thumbor.log", env)
    server = Thumbor(port, root, result, proc)
    try:
        wait_http(port, "/healthcheck", proc)
        deadline = time.monotonic() + 30
        while len(server.workers) < WORKERS and time.monotonic() < deadline:
            server.workers = children(proc.pid)
            time.sleep(0.05)
        yield server
    finally:
        proc.stop()


# --- nginx -------------------------------------------------------------------------------------
def nginx_bin() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def ensure_apt(binary: str, package: str) -> str | None:
    """The path of ``binary``, installing Debian's ``package`` if it is missing."""
    found = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if os.access(f"/usr/sbin/{binary}", os.X_OK) else None
    )
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with contextlib.suppress(subprocess.CalledProcessError, OSError):
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    return shutil.which(binary) or (
        f"/usr/sbin/{binary}" if os.access(f"/usr/sbin/{binary}", os.X_OK) else None
    )


@dataclass
class Nginx:
    port: int
    prefix: Path
    process: Process

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def nginx(name: str, conf_text: str, dirs: tuple[str, ...] = (), **values: str) -> Iterator[Nginx]:
    """nginx in the foreground with its own prefix; ``{{PREFIX}}``, ``{{PORT}}`` and
    ``{{NAME}}`` (for each keyword) are replaced in the config text, as in tests/servers.py."""
    binary = nginx_bin() or ensure_apt("nginx", "nginx-light")
    if binary is None:
        raise RuntimeError("nginx is not installed and apt-get could not install it")
    prefix = WORK / "nginx" / name
    shutil.rmtree(prefix, ignore_errors=True)
    (prefix / "logs").mkdir(parents=True)
    for d in dirs:
        (prefix / d).mkdir(parents=True, exist_ok=True)
    os.chmod(prefix, 0o755)
    port = free_port()
    repl = {"PREFIX": str(prefix), "PORT": str(port), **{k.upper(): v for k, v in values.items()}}
    for key, value in repl.items():
        conf_text = conf_text.replace("{{" + key + "}}", value)
    conf = prefix / "nginx.conf"
    conf.write_text(conf_text)
    argv = [binary, "-p", f"{prefix}/", "-e", str(prefix / "logs" / "error.log"), "-c", str(conf)]
    argv += ["-g", f"daemon off; pid {prefix}/nginx.pid;"]
    proc = Process(argv, prefix / "nginx.out")
    server = Nginx(port, prefix, proc)
    try:
        deadline = time.monotonic() + 20
        while not port_open(port):
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start:\n{proc.tail()}")
            time.sleep(0.05)
        yield server
    finally:
        proc.stop()
