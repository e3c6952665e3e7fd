"""Fixtures and checks shared by the hardening tests."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import create_app
from tests.conftest import make_settings

SNAKE = re.compile(r"[a-z][a-z0-9_]*")
# What an error body may never contain: a server path, a traceback, a secret from conftest.
# (Error messages may echo a short piece of the request, such as an unknown format name, so
# only what the server alone knows counts.)
LEAKS = re.compile(
    r"Traceback \(most recent|File \"/|site-packages|/staging/|metadata\.db|"
    r"alice-key-|bob-key-|admin-key-|signing-secret-|OperationalError|IntegrityError",
)


def assert_json_error(response, statuses: range | set[int] = range(400, 500)) -> str:  # type: ignore[no-untyped-def]
    """A rejection: a status in ``statuses``, the contract's JSON error, nosniff, no leak.
    Works for Flask test responses and ``requests`` responses; returns the error code."""
    status = getattr(response, "status_code", None)
    assert status in statuses, (status, _body(response)[:300])
    headers = response.headers
    assert headers.get("X-Content-Type-Options") == "nosniff"
    content_type = headers.get("Content-Type", "")
    assert content_type.startswith("application/json"), content_type
    body = _json(response)
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    code, message = body["error"].get("code"), body["error"].get("message")
    assert isinstance(code, str) and SNAKE.fullmatch(code), body
    assert isinstance(message, str) and message, body
    assert not LEAKS.search(_body(response)), _body(response)[:500]
    return code


def _json(response):  # type: ignore[no-untyped-def]
    if hasattr(response, "get_json"):
        return response.get_json(silent=True)
    return response.json()


def _body(response) -> str:  # type: ignore[no-untyped-def]
    data = getattr(response, "data", None)
    if data is None:
        data = response.content
    return data.decode("utf-8", "replace")


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One app per module for property tests: hypothesis runs hundreds of examples, and a fresh
    app per example would spend the time budget on migrations instead of inputs."""
    data_dir: Path = tmp_path_factory.mktemp("hardening") / "data"
    data_dir.mkdir()
    application = create_app(make_settings(data_dir))
    application.config["TESTING"] = False  # let the app's own error handlers answer, as live
    yield application
    application.config["IMAGE_ORIGIN"].close()


@pytest.fixture(scope="module")
def shared_client(shared_app):  # type: ignore[no-untyped-def]
    return shared_app.test_client()
