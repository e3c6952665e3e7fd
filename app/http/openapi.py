"""/openapi.json: the OpenAPI 3.1 description of the whole HTTP API.

The document is kept in the repository (app/openapi.json), reviewed like code and loaded once at
start-up; tests/ops/test_openapi.py checks that it names every route the app serves and runs
schemathesis against a live server with it.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from flask import Blueprint, Response

bp = Blueprint("openapi", __name__)


@cache
def document_bytes() -> bytes:
    raw = resources.files("app").joinpath("openapi.json").read_bytes()
    json.loads(raw)  # a broken document stops start-up rather than every client
    return raw


def document() -> dict[str, Any]:
    return json.loads(document_bytes())


@bp.get("/openapi.json")
def openapi_json() -> Response:
    response = Response(document_bytes(), content_type="application/json")
    response.headers["Cache-Control"] = "no-cache"
    return response
