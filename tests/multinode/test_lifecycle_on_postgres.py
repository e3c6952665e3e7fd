"""The data-lifecycle suites of issue 5 (gc races and batches, reconcile, re-upload, verify, the
gc command with two processes at once, tiering and restore), run again unchanged with PostgreSQL
as the metadata store: the twelve fault tests and the rest of those files.

How: as in test_earlier_suites_on_postgres.py, the tests of those modules are collected here a
second time, and an autouse fixture points ``base_env`` (every ``settings``, ``make_settings``,
in-process ``cli`` and spawned ``image-origin`` goes through it) at a fresh PostgreSQL database
for each test. Where a test touches the database directly, it goes through the backend-neutral
``db(services)`` of tests/lifecycle/conftest.py (psycopg here, sqlite3 there).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lifecycle import (
    conftest as lifecycle,
)
from tests.lifecycle import (
    test_gc_batches,
    test_gc_cli,
    test_gc_races,
    test_reconcile,
    test_reupload,
    test_tier_batches,
    test_tiering,
    test_verify,
)
from tests.lifecycle.conftest import cli  # noqa: F401 - the lifecycle suites' fixture
from tests.multinode.conftest import collect_into, point_base_env_at

SUITES = (
    test_gc_races,
    test_gc_batches,
    test_reconcile,
    test_reupload,
    test_verify,
    test_gc_cli,
    test_tiering,
    test_tier_batches,
)


@pytest.fixture(autouse=True)
def _metadata_on_postgres(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    point_base_env_at(pg_url, monkeypatch, (lifecycle, *SUITES))
    return pg_url


def test_the_lifecycle_suites_really_run_on_postgresql(services, cli, _metadata_on_postgres):  # noqa: F811
    from app.metadata.postgres import PostgresMetadataStore

    assert isinstance(services.meta, PostgresMetadataStore)
    assert services.settings.database_url == _metadata_on_postgres
    assert lifecycle.db(services).postgres
    assert cli("reconcile").exit_code == 0  # the CLI, and (below) a spawned process, too
    proc = lifecycle.spawn(Path(services.settings.data_dir), "reconcile")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "reconcile:" in out, out + err
    assert not (Path(services.settings.data_dir) / "metadata.db").exists()


# Not collected here, each with its reason.
EXCLUDED: dict[str, str] = {
    "test_every_command_has_help": "prints --help only; never opens the metadata store",
    "test_shipped_cron_schedule_registers_the_four_jobs": "reads the RQ schedule; no metadata",
}

collect_into(globals(), SUITES, EXCLUDED)
