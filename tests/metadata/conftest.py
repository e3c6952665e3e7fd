"""PostgreSQL for tests, and one ``store`` fixture over every metadata backend.

``pg_server`` is a real PostgreSQL (initdb + pg_ctl in a temp folder, see tests/servers.py),
started once per run and only when a test asks for it; ``pg_url`` is a fresh, empty database on
it for one test, dropped afterwards. tests/multinode/conftest.py imports the same fixture
functions; they share one server through ``shared_postgres`` (a fixture defined in two
conftests is two fixtures, and would otherwise start two servers).

Without PostgreSQL installed the tests that need it skip, or fail when ``CI=true``.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.metadata import MetadataStore
from tests import servers

BACKENDS = ["sqlite", "postgres"]

_shared: dict[str, Any] = {"server": None, "stack": None, "users": 0}
_shared_lock = threading.Lock()


@contextlib.contextmanager
def shared_postgres() -> Iterator[servers.PostgresServer]:
    """One PostgreSQL per test run however many conftests ask for it (reference counted)."""
    with _shared_lock:
        if _shared["server"] is None:
            stack = contextlib.ExitStack()
            _shared["server"] = stack.enter_context(servers.postgres_server())
            _shared["stack"] = stack
        _shared["users"] += 1
        server = _shared["server"]
    try:
        yield server
    finally:
        with _shared_lock:
            _shared["users"] -= 1
            if _shared["users"] == 0:
                stack, _shared["stack"], _shared["server"] = _shared["stack"], None, None
                stack.close()


def database_url(server: servers.PostgresServer, name: str) -> str:
    return f"postgresql://postgres@{servers.LOOPBACK}:{server.port}/{name}"


@contextlib.contextmanager
def fresh_database(server: servers.PostgresServer) -> Iterator[str]:
    """A new empty database for one test; dropped (with any connection left) afterwards."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:20]}"
    with psycopg.connect(server.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(server, name)
    finally:
        with psycopg.connect(server.url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_server() -> Iterator[servers.PostgresServer]:
    with shared_postgres() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: servers.PostgresServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database; every store opened on it during the test is closed afterwards (an
    app a test forgot to close would otherwise keep reconnecting to a dropped database)."""
    from app.metadata.postgres import PostgresMetadataStore

    opened: list[PostgresMetadataStore] = []
    real_init = PostgresMetadataStore.__init__

    def tracking_init(self: PostgresMetadataStore, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(PostgresMetadataStore, "__init__", tracking_init)
    with fresh_database(pg_server) as url:
        yield url
        for store in opened:
            store.close()


# --- one store fixture over every backend ------------------------------------------------------
def open_store(backend: str, where: str) -> MetadataStore:
    if backend == "sqlite":
        from app.metadata.sqlite import SqliteMetadataStore

        return SqliteMetadataStore(where)
    from app.metadata.postgres import PostgresMetadataStore

    return PostgresMetadataStore(where)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(backend name, where its database is): a temp SQLite file or a fresh PG database."""
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "metadata.db")
    return "postgres", request.getfixturevalue("pg_url")


@pytest.fixture
def make_store(backend: tuple[str, str]) -> Iterator[Callable[[], MetadataStore]]:
    """Open another store on the same database (as a second node or worker would), migrated."""
    opened: list[MetadataStore] = []

    def make() -> MetadataStore:
        store = open_store(*backend)
        store.migrate()
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: Callable[[], MetadataStore]) -> MetadataStore:
    return make_store()
