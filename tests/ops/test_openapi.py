"""app/openapi.json: a valid OpenAPI 3.1 document of every route, and the live server keeps it.

Proves: the document validates as OpenAPI 3.1 and is what /openapi.json serves; every route and
method the Flask app has is described (and nothing that does not exist); schemathesis, generating
valid and invalid requests for every operation against a real gunicorn, finds no 5xx and no
answer outside the contract (status, content type, headers, body schema); real data (an uploaded
image, its reference, a signed URL) answers in the documented shapes too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app import create_app
from tests.conftest import ADMIN, auth, make_settings
from tests.live import LiveServer, gunicorn
from tests.ops.conftest import sample_jpeg, upload_via

DOC_PATH = Path(__file__).resolve().parents[2] / "app" / "openapi.json"
IGNORED_METHODS = {"OPTIONS"}


def load_document() -> dict:
    return json.loads(DOC_PATH.read_text())


def test_document_is_valid_openapi_31() -> None:
    doc = load_document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def _normalise(path: str) -> str:
    """/v1/images/<ref_id> and /v1/images/{id} -> /v1/images/{}"""
    return re.sub(r"<(?:[a-z0-9]+:)?[a-z_]+>|\{[a-z_]+\}", "{}", path.rstrip("/") or "/")


def test_document_describes_every_route(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    served = set()
    for rule in app.url_map.iter_rules():
        for method in rule.methods - IGNORED_METHODS:
            served.add((_normalise(rule.rule), method))
    documented = set()
    for path, item in load_document()["paths"].items():
        for method in item:
            if method != "parameters":
                documented.add((_normalise(path), method.upper()))
    # Flask answers HEAD wherever it answers GET; the document lists HEAD on the image routes
    # (CDNs use it) and not on JSON routes, where it is the same as GET without a body.
    missing = {(p, m) for p, m in served - documented if m != "HEAD"}
    assert not missing, f"routes not in app/openapi.json: {sorted(missing)}"
    assert not documented - served, f"documented but not served: {documented - served}"
    image_routes = {p for p, _ in served if p.startswith(("/{}/", "/s/{}/"))}
    assert {p for p, m in documented if m == "HEAD"} == image_routes


def test_served_document_is_the_repository_file(live: LiveServer) -> None:
    r = requests.get(f"{live.url}/openapi.json", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.json() == load_document()


# --- schemathesis against the live server --------------------------------------------------------
@pytest.fixture(scope="module")
def api_live(module_data_dir: Path) -> Iterator[LiveServer]:
    with gunicorn(module_data_dir, workers=2, threads=4) as server:
        upload_via(server.url, sample_jpeg(seed=61), auth(ADMIN))
        yield server


# The schema comes from the file (schemathesis' lazy fixture loader does not work with the
# pytest in use); requests go to the live server through base_url. The admin key (which may
# upload and list too) is the bearer token of the document's security scheme, so schemathesis
# knows which requests carry it and which of its probes leave it out or spoil it.
schema = schemathesis.openapi.from_path(
    DOC_PATH,
    config=SchemathesisConfig.from_dict({"auth": {"openapi": {"apiKey": {"bearer": ADMIN}}}}),
)


@schema.parametrize()
@settings(max_examples=15, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_live_server_keeps_the_contract(case, api_live: LiveServer) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate(
        base_url=api_live.url,
        timeout=30,
        # A schema-valid request may still be refused on its meaning, which no schema states:
        # a cursor this server did not issue, bytes that are no image, a preset or width this
        # deployment does not configure. Every other built-in check runs.
        excluded_checks=[positive_data_acceptance],
    )


def test_real_answers_match_the_schema(api_live: LiveServer) -> None:
    """Random data rarely reaches the success paths: drive each one with real data and let
    schemathesis validate status, headers, content type and body against the document."""
    doc = upload_via(api_live.url, sample_jpeg(seed=62), auth(ADMIN))
    digest, ref_id = doc["hash"], doc["id"]

    def check(path: str, method: str, expect: int, **parts):  # type: ignore[no-untyped-def]
        case = schema[path][method].Case(**parts)
        response = case.call_and_validate(
            base_url=api_live.url,
            headers=auth(ADMIN),
            timeout=30,
            excluded_checks=[positive_data_acceptance],
        )
        assert response.status_code == expect, (path, method, response.text[:300])
        return response

    ref = {"path_parameters": {"id": ref_id}}
    check("/v1/images", "GET", 200, query={"limit": 5})
    check("/v1/images/{id}", "GET", 200, **ref)
    signed = check(
        "/v1/images/{id}/signed-url",
        "POST",
        200,
        body={"format": "webp", "quality": "low", "width": 160, "expires_in": 60},
        media_type="application/json",
        **ref,
    ).json()["url"]
    check("/v1/objects", "GET", 200)
    check("/v1/objects/{hash}", "GET", 200, path_parameters={"hash": digest})
    check("/v1/config", "GET", 200)
    check("/{hash}/original", "GET", 200, path_parameters={"hash": digest})
    check("/{hash}/original", "HEAD", 200, path_parameters={"hash": digest})
    variant = {"hash": digest, "format": "auto", "quality": "high"}
    got = check(
        "/{hash}/{format}/{quality}", "GET", 200, path_parameters=variant,
        headers={"Accept": "image/webp"},
    )  # fmt: skip
    assert got.headers["content-type"] == ["image/webp"]
    check(
        "/{hash}/{format}/{quality}", "GET", 304, path_parameters=variant,
        headers={"Accept": "image/webp", "If-None-Match": got.headers["etag"][0]},
    )  # fmt: skip
    sized = {"hash": digest, "format": "avif", "quality": "low", "width": 160}
    check("/{hash}/{format}/{quality}/{width}", "GET", 200, path_parameters=sized)
    token = signed.split("/s/")[1].split("/")[0]
    check(
        "/s/{token}/{hash}/{format}/{quality}/{width}", "GET", 200,
        path_parameters={"token": token, "hash": digest, "format": "webp", "quality": "low",
                         "width": 160},
    )  # fmt: skip
    check("/v1/images/{id}", "DELETE", 204, **ref)
    check("/{hash}/original", "GET", 410, path_parameters={"hash": digest})
    check("/v1/images/{id}/restore", "POST", 200, **ref)
    check("/healthz", "GET", 200)
    check("/readyz", "GET", 200)
    check("/metrics", "GET", 200)
    check("/openapi.json", "GET", 200)
    check("/admin", "GET", 200)
    check("/admin/static/{filename}", "GET", 200, path_parameters={"filename": "admin.js"})
