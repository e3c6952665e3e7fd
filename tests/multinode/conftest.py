"""Fixtures for the tests that run the app on PostgreSQL: several nodes, and the earlier suites.

``pg_server`` and ``pg_url`` are the same fixture functions as tests/metadata/conftest.py's
(one PostgreSQL per run, shared through ``shared_postgres``; a fresh database per test).
``point_base_env_at`` and ``collect_into`` are how the earlier suites run again on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType

import pytest

from tests import conftest, live
from tests.metadata.conftest import pg_server, pg_url  # noqa: F401 - fixtures, shared

__all__ = ["collect_into", "pg_server", "pg_url", "point_base_env_at"]


def point_base_env_at(
    database_url: str, monkeypatch: pytest.MonkeyPatch, modules: Iterable[ModuleType]
) -> None:
    """Make ``base_env`` (which every ``settings``, ``make_settings``, ``tests.live.gunicorn``
    and subprocess environment goes through) name ``database_url`` as the metadata store, in
    tests/conftest.py itself and in every one of ``modules`` that imported it by name."""
    original: Callable[..., dict[str, str]] = conftest.base_env

    def base_env(data_dir: Path, **extra: str) -> dict[str, str]:
        return original(data_dir, **{"IMAGE_ORIGIN_DATABASE_URL": database_url, **extra})

    for module in (conftest, live, *modules):
        if getattr(module, "base_env", None) is original:
            monkeypatch.setattr(module, "base_env", base_env)


def _is_fixture(obj: object) -> bool:
    return hasattr(obj, "_fixture_function_marker") or hasattr(obj, "_pytestfixturefunction")


def collect_into(
    namespace: dict[str, object], suites: Iterable[ModuleType], excluded: dict[str, str]
) -> None:
    """Collect the tests of ``suites`` a second time, in the module whose globals are
    ``namespace`` (each test function as it is, with the suites' own fixtures beside them),
    except the ``excluded`` names. The suites stay where they are and run there as before."""
    for suite in suites:
        for name, obj in vars(suite).items():
            if name.startswith("test_") and callable(obj) and name not in excluded:
                assert name not in namespace, f"{name} is in two suites; rename one"
                namespace[name] = obj
            elif _is_fixture(obj):  # a suite's own fixtures (e.g. private_image)
                assert namespace.get(name, obj) is obj, f"fixture {name} is in two suites"
                namespace[name] = obj
    unknown = set(excluded) - {n for s in suites for n in vars(s) if n.startswith("test_")}
    assert not unknown, f"excluded tests that no suite has: {sorted(unknown)}"
