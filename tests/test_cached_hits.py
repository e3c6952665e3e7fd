"""Cache hits answered before Flask (app/http/cached_hits.py) give exactly Flask's answer, and
every change of state (delete, private, integrity failure, eviction) shows at once."""

from __future__ import annotations

import time

import pytest

from app import metrics
from app.settings import VariantSpec
from app.variant_service import variant_storage_key
from tests import images
from tests.conftest import auth
from tests.test_variants_http import lookups, upload

VARIANT = "webp/high/160"


@pytest.fixture
def dispatches(app, monkeypatch):  # type: ignore[no-untyped-def]
    """How many requests reached Flask's dispatch (the views)."""
    count = {"n": 0}
    real = app.full_dispatch_request

    def counted():  # type: ignore[no-untyped-def]
        count["n"] += 1
        return real()

    monkeypatch.setattr(app, "full_dispatch_request", counted)
    return count


def _requests_total(route: str) -> float:
    return metrics.REQUESTS.labels(route=route, method="GET", status="200")._value.get()


def _per_request(headers) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {k: v for k, v in headers.items() if k != "X-Request-ID"}


def test_a_hit_skips_flask_and_answers_the_same(client, dispatches):
    doc = upload(client, images.jpeg(400, 300, seed=31))
    path = f"/{doc['hash']}/{VARIANT}"
    made = client.get(path)  # transform, through Flask
    first_hit = client.get(path)  # from the cache, through Flask (the path is learnt here)
    assert dispatches["n"] == 2
    route = "/<sha256:digest>/<fmt>/<quality>/<width>"
    counted, cache_hits = _requests_total(route), lookups("cache")
    shortcut = client.get(path, headers={"X-Request-ID": "edge-42"})
    assert dispatches["n"] == 2, "the hit went through Flask"
    assert shortcut.status_code == 200 and shortcut.data == made.data == first_hit.data
    assert _per_request(shortcut.headers) == _per_request(first_hit.headers)
    assert shortcut.headers["X-Request-ID"] == "edge-42"
    assert shortcut.headers["Content-Length"] == str(len(made.data))
    assert _requests_total(route) == counted + 1 and lookups("cache") == cache_hits + 1
    fresh = client.get(path, headers={"X-Request-ID": 'bad "id"'}).headers["X-Request-ID"]
    assert len(fresh) == 32 and fresh != shortcut.headers["X-Request-ID"]
    # Without a width: its own route label, same behaviour.
    whole = f"/{doc['hash']}/jpeg/low"
    for _ in range(2):
        assert client.get(whole).status_code == 200
    before = dispatches["n"]
    assert client.get(whole).status_code == 200 and dispatches["n"] == before


def test_changes_of_state_show_at_once(client, services, dispatches):
    pub = upload(client, images.jpeg(400, 300, seed=32))
    path = f"/{pub['hash']}/{VARIANT}"
    for _ in range(3):
        assert client.get(path).status_code == 200
    priv = upload(client, images.jpeg(400, 300, seed=32), private=True)  # same bytes
    client.delete(f"/v1/images/{pub['id']}", headers=auth())
    r = client.get(path)  # only a private reference is left
    assert r.status_code == 403 and r.json["error"]["code"] == "private"
    client.delete(f"/v1/images/{priv['id']}", headers=auth())
    r = client.get(path)
    assert r.status_code == 410 and r.json["error"]["code"]


def test_integrity_failure_and_eviction_go_back_to_flask(client, services, dispatches):
    doc = upload(client, images.jpeg(400, 300, seed=33))
    path = f"/{doc['hash']}/{VARIANT}"
    made = [client.get(path) for _ in range(3)][-1]
    key = variant_storage_key(doc["hash"], VariantSpec("webp", "high", 160), services.settings)
    services.service.variants.cache.delete(key)
    before = dispatches["n"]
    again = client.get(path)  # no longer cached: through Flask
    assert again.status_code == 200 and again.data == made.data and dispatches["n"] == before + 1
    services.meta.mark_integrity_failure(doc["hash"], time.time())
    r = client.get(path)
    assert r.status_code == 500 and r.json["error"]["code"] == "integrity_failure"


@pytest.mark.parametrize(
    "how",
    ["if-none-match", "head", "query", "encoded"],
)
def test_requests_that_could_differ_go_to_flask(client, dispatches, how):
    doc = upload(client, images.jpeg(400, 300, seed=34))
    path = f"/{doc['hash']}/{VARIANT}"
    etag = [client.get(path) for _ in range(2)][-1].headers["ETag"]
    before = dispatches["n"]
    if how == "if-none-match":
        r = client.get(path, headers={"If-None-Match": etag})
        assert r.status_code == 304
    elif how == "head":
        r = client.head(path)
        assert r.status_code == 200 and r.data == b""
    elif how == "query":
        assert client.get(path + "?x=1").status_code == 200
    else:
        assert client.get(path.replace("/webp/", "/%77ebp/")).status_code == 200
    assert dispatches["n"] == before + 1


def test_access_is_recorded_on_a_shortcut_hit(client, services, dispatches):
    doc = upload(client, images.jpeg(400, 300, seed=35))
    path = f"/{doc['hash']}/{VARIANT}"
    for _ in range(2):
        client.get(path)
    later = time.time() + 7200  # past the one-hour access interval
    services.service.clock = lambda: later
    before = dispatches["n"]
    assert client.get(path).status_code == 200 and dispatches["n"] == before
    assert services.meta.get_object(doc["hash"]).last_accessed_at == later
