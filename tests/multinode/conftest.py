"""Fixtures for the tests that run the app on PostgreSQL: several nodes, and the earlier suites.

``pg_server`` and ``pg_url`` are the same fixture functions as tests/metadata/conftest.py's
(one PostgreSQL per run, shared through ``shared_postgres``; a fresh database per test).
"""

from __future__ import annotations

from tests.metadata.conftest import pg_server, pg_url  # noqa: F401 - fixtures, shared

__all__ = ["pg_server", "pg_url"]
