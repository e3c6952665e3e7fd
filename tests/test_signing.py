"""Private content and signed, expiring URLs."""

from __future__ import annotations

import json
import logging
import re
import time

import pytest
from click.testing import CliRunner

from app import create_app
from app.signing import UrlSigner, redacted
from tests import images
from tests.conftest import BOB, SIGNING, auth, base_env, make_settings
from tests.waiting import wait_stored

OTHER_KEY = "another-signing-secret-0123456789"


class StoreSpy:
    """Counts every call that reaches the blob store or the metadata store."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        attr = getattr(self.inner, name)
        if callable(attr):

            def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
                self.calls.append(name)
                return attr(*args, **kwargs)

            return wrapped
        return attr


def spy_on_stores(services) -> tuple[StoreSpy, StoreSpy]:  # type: ignore[no-untyped-def]
    """Put spies in front of the service's blob and metadata stores (the variant service's
    too); returns (blobs, meta)."""
    blob_spy, meta_spy = StoreSpy(services.blobs), StoreSpy(services.meta)
    services.service.blobs = services.service.variants.blobs = blob_spy
    services.service.meta = services.service.variants.meta = meta_spy
    return blob_spy, meta_spy


def rejections(caplog) -> list[dict]:  # type: ignore[no-untyped-def]
    """The ``signature_rejected`` events logged so far."""
    found = []
    for record in caplog.records:
        if record.name == "image_origin" and '"signature_rejected"' in record.getMessage():
            found.append(json.loads(record.getMessage()))
    return found


@pytest.fixture
def private_image(client):  # type: ignore[no-untyped-def]
    r = client.post("/v1/images?private=true", data=images.jpeg(500, 400, seed=3), headers=auth())
    assert r.status_code == 201
    return r.json


def sign(path: str, expires_in: int = 600, keys=(SIGNING,)) -> str:  # type: ignore[no-untyped-def]
    return UrlSigner(list(keys)).sign_path(path, int(time.time()) + expires_in)


def test_private_content_needs_a_signature_on_every_route(client, private_image):
    h = private_image["hash"]
    for path in (f"/{h}/original", f"/{h}/webp/high", f"/{h}/jpeg/low/160", f"/{h}/auto/high"):
        r = client.get(path)
        assert r.status_code == 403 and r.json["error"]["code"] == "private", path
        assert client.head(path).status_code == 403
    for path in (f"{h}/original", f"{h}/webp/high", f"{h}/jpeg/low/160", f"{h}/auto/high"):
        r = client.get(sign(path))
        assert r.status_code == 200, (path, r.json)


def test_signed_url_from_api_and_its_cache_control(client, private_image):
    r = client.post(
        f"/v1/images/{private_image['id']}/signed-url",
        json={"format": "webp", "quality": "high", "width": 320, "expires_in": 120},
        headers=auth(),
    )
    assert r.status_code == 200, r.json
    url, expires_at = r.json["url"], r.json["expires_at"]
    assert re.fullmatch(
        rf"http://localhost/s/\d+\.[A-Za-z0-9_-]+/{private_image['hash']}/webp/high/320", url
    )
    assert expires_at.endswith("Z")
    got = client.get(url.removeprefix("http://localhost"))
    assert got.status_code == 200 and got.headers["Content-Type"] == "image/webp"
    cc = got.headers["Cache-Control"]
    assert cc.startswith("private, max-age=") and "immutable" not in cc
    assert 110 <= int(cc.split("max-age=")[1]) <= 120
    # public content through a signed URL: shareable, but still bounded by the expiry
    pub = client.post("/v1/images", data=images.png(40, 40), headers=auth()).json
    short = client.get(sign(f"{pub['hash']}/original", expires_in=30))
    cc = short.headers["Cache-Control"]
    assert cc.startswith("public, max-age=") and int(cc.split("max-age=")[1]) <= 30
    assert "Expires" in short.headers
    orig = client.post(
        f"/v1/images/{private_image['id']}/signed-url",
        json={"format": "original", "expires_in": 60},
        headers=auth(),
    )
    assert client.get(orig.json["url"].removeprefix("http://localhost")).data == images.jpeg(
        500, 400, seed=3
    )


@pytest.mark.parametrize(
    "body, code",
    [
        ({"format": "gif", "quality": "high", "expires_in": 60}, "unknown_format"),
        ({"format": "webp", "quality": "ultra", "expires_in": 60}, "unknown_quality"),
        ({"format": "webp", "quality": "high", "width": 333, "expires_in": 60}, "unknown_width"),
        ({"format": "webp", "quality": "high", "width": "640", "expires_in": 60}, "unknown_width"),
        ({"format": "webp", "quality": "high", "expires_in": 0}, "invalid_expires_in"),
        ({"format": "webp", "quality": "high", "expires_in": -5}, "invalid_expires_in"),
        ({"format": "webp", "quality": "high", "expires_in": 10**9}, "invalid_expires_in"),
        ({"format": "webp", "quality": "high", "expires_in": "60"}, "invalid_expires_in"),
        ({"format": "webp", "quality": "high"}, "invalid_expires_in"),
        ({"format": "original", "quality": "high", "expires_in": 60}, "invalid_variant"),
        ([1, 2], "invalid_json"),
    ],
)
def test_signed_url_request_validation(client, private_image, body, code):
    r = client.post(f"/v1/images/{private_image['id']}/signed-url", json=body, headers=auth())
    assert r.status_code == 400 and r.json["error"]["code"] == code


def test_signed_url_is_for_the_owner_only(client, private_image):
    body = {"format": "webp", "quality": "high", "expires_in": 60}
    other = client.post(
        f"/v1/images/{private_image['id']}/signed-url", json=body, headers=auth(BOB)
    )
    assert other.status_code == 404
    assert (
        client.post("/v1/images/img_nope/signed-url", json=body, headers=auth()).status_code == 404
    )


def _tampered_paths(good: str, h: str, other_hash: str) -> dict[str, str]:
    token = good.split("/")[2]
    expiry, sig = token.split(".")
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    foreign = UrlSigner([OTHER_KEY]).token(f"{h}/webp/high/640", int(expiry))
    pushed = f"{int(expiry) + 3600}.{sig}"
    return {
        "hash changed": f"/s/{token}/{other_hash}/webp/high/640",
        "format changed": f"/s/{token}/{h}/jpeg/high/640",
        "quality changed": f"/s/{token}/{h}/webp/low/640",
        "width changed": f"/s/{token}/{h}/webp/high/320",
        "width removed": f"/s/{token}/{h}/webp/high",
        "width added": f"/s/{token}/{h}/webp/high/640/320",
        "token truncated": f"/s/{token[:-4]}/{h}/webp/high/640",
        "token character flipped": f"/s/{expiry}.{flipped}/{h}/webp/high/640",
        "token from another key": f"/s/{foreign}/{h}/webp/high/640",
        "token moved to another hash": f"/s/{token}/{other_hash}/webp/high/640",
        "expiry pushed forward": f"/s/{pushed}/{h}/webp/high/640",
        "double slash after token": f"/s/{token}//{h}/webp/high/640",
        "double slash inside": f"/s/{token}/{h}//webp/high/640",
        "percent-encoded slashes": f"/s/{token}/{h}%2Fwebp%2Fhigh%2F640",
        "percent-encoded dots": f"/s/{token}/%2e%2e/{h}/webp/high/640",
        "percent-encoded width": f"/s/{token}/{h}/webp/high/%36%34%30",
        "encoded s prefix": f"/%73/{token}/{h}/webp/high/640",
        "no token": f"/s//{h}/webp/high/640",
        "garbage token": f"/s/not-a-token/{h}/webp/high/640",
    }


def test_tampered_signed_urls_are_403_and_never_reach_storage(app, client, private_image, caplog):
    h = private_image["hash"]
    other = client.post("/v1/images?private=true", data=images.png(30, 30), headers=auth()).json
    good = sign(f"{h}/webp/high/640")
    assert client.get(good).status_code == 200
    services = app.config["IMAGE_ORIGIN"]
    wait_stored(services, h)  # the variant is stored after the answer; let that finish first
    blob_spy, meta_spy = spy_on_stores(services)
    tampered = _tampered_paths(good, h, other["hash"])
    with caplog.at_level(logging.DEBUG, logger="image_origin"):
        for name, path in tampered.items():
            before = len(rejections(caplog))
            r = client.get(path)
            assert r.status_code == 403, (name, path, r.status_code)
            assert r.json["error"]["code"] == "signature_invalid", name
            events = rejections(caplog)
            assert len(events) == before + 1, f"{name}: not one signature_rejected event"
            assert events[-1]["code"] == "signature_invalid", name
            assert events[-1]["path"].startswith("/s/-/"), (name, events[-1]["path"])
    assert blob_spy.calls == [] and meta_spy.calls == []
    # the path is kept, the token is not
    changed = events[list(tampered).index("format changed")]
    assert changed["path"] == f"/s/-/{h}/jpeg/high/640" and changed["method"] == "GET"
    token = good.split("/")[2]
    for secret in {token, token.split(".")[1], *(p.split("/")[2] for p in tampered.values())}:
        if len(secret) >= 20:  # every token and signature here (the empty one is no secret)
            assert secret not in caplog.text, secret
    assert client.get(sign(f"{h}/webp/high/320")).status_code == 200
    assert meta_spy.calls and blob_spy.calls  # the spies do see what gets through


def test_expiry_to_the_second(app, client, private_image, caplog):  # type: ignore[no-untyped-def]
    h = private_image["hash"]
    signer = UrlSigner([SIGNING])
    blob_spy, meta_spy = spy_on_stores(app.config["IMAGE_ORIGIN"])
    now = int(time.time())
    expired = signer.sign_path(f"{h}/webp/high", now - 1)
    with caplog.at_level(logging.DEBUG, logger="image_origin"):
        r = client.get(expired)
    assert r.status_code == 403 and r.json["error"]["code"] == "signature_expired"
    assert blob_spy.calls == [] and meta_spy.calls == []  # refused before any lookup
    (logged,) = rejections(caplog)
    assert logged["code"] == "signature_expired"
    assert logged["path"] == f"/s/-/{h}/webp/high"
    token = expired.split("/")[2]
    assert token not in caplog.text and token.split(".")[1] not in caplog.text
    assert client.get(signer.sign_path(f"{h}/webp/high", now + 2)).status_code == 200
    assert meta_spy.calls and blob_spy.calls  # the spies do see what gets through
    assert signer.verify_raw(signer.sign_path(f"{h}/original", now), now=now).expires_at == now


def test_redacted_drops_whatever_stands_in_the_token_place() -> None:
    h = "ab" * 32
    assert redacted(f"/s/123.{'A' * 43}/{h}/webp/high/640") == f"/s/-/{h}/webp/high/640"
    assert redacted(f"/s//{h}/original") == f"/s/-/{h}/original"
    assert redacted("/s/only-a-token") == "/s/-/"
    assert len(redacted("/s/t/" + "x" * 5000)) == 512


def test_key_rotation(data_dir, private_image, client):
    h = private_image["hash"]
    old_url = sign(f"{h}/webp/high", keys=[SIGNING])
    rotated = create_app(make_settings(data_dir, signing_keys=(OTHER_KEY, SIGNING))).test_client()
    assert rotated.get(old_url).status_code == 200  # old key still listed: verifies
    new_url = sign(f"{h}/webp/high", keys=[OTHER_KEY])
    assert rotated.get(new_url).status_code == 200  # the first key signs
    dropped = create_app(make_settings(data_dir, signing_keys=(OTHER_KEY,))).test_client()
    assert dropped.get(old_url).status_code == 403
    assert dropped.get(new_url).status_code == 200


def test_public_private_transitions_and_purge_event(client, caplog):
    data = images.jpeg(200, 200, seed=41)
    a = client.post("/v1/images?private=true", data=data, headers=auth()).json
    url = f"/{a['hash']}/webp/high/160"
    assert client.get(url).status_code == 403
    b = client.post("/v1/images?private=false", data=data, headers=auth(BOB)).json
    assert client.get(url).status_code == 200  # a public reference makes it public
    c = client.post("/v1/images?private=false", data=data, headers=auth()).json
    client.delete(f"/v1/images/{b['id']}", headers=auth(BOB))
    assert client.get(url).status_code == 200  # still one public reference
    with caplog.at_level(logging.INFO, logger="image_origin"):
        assert client.delete(f"/v1/images/{c['id']}", headers=auth()).status_code == 204
    assert client.get(url).status_code == 403  # the last public reference went
    events = [json.loads(r.getMessage()) for r in caplog.records if "cdn_purge" in r.getMessage()]
    assert len(events) == 1
    urls = events[0]["urls"]
    assert f"/{a['hash']}/original" in urls and f"/{a['hash']}/webp/high/160" in urls
    assert f"/{a['hash']}/auto/high/160" in urls and f"/{a['hash']}/avif/low" in urls
    assert len(urls) == 1 + 4 * 2 * 9  # original + every format, preset and width
    assert events[0]["prefix"] == f"/{a['hash']}/"
    client.post(f"/v1/images/{c['id']}/restore", headers=auth())
    assert client.get(url).status_code == 200
    client.delete(f"/v1/images/{a['id']}", headers=auth())  # a private reference: no change
    assert client.get(url).status_code == 200


def test_sign_url_cli(data_dir, private_image, client):
    from app.cli import main

    env = base_env(data_dir, IMAGE_ORIGIN_CDN_BASE_URL="https://cdn.example.com")
    h = private_image["hash"]
    result = CliRunner().invoke(
        main,
        [
            "sign-url",
            h,
            "--format",
            "webp",
            "--quality",
            "high",
            "--width",
            "640",
            "--expires-in",
            "3600",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    url = result.output.strip()
    assert url.startswith("https://cdn.example.com/s/") and url.endswith(f"/{h}/webp/high/640")
    assert client.get(url.removeprefix("https://cdn.example.com")).status_code == 200
    bad = CliRunner().invoke(
        main,
        ["sign-url", h, "--format", "webp", "--quality", "ultra", "--expires-in", "60"],
        env=env,
    )
    assert bad.exit_code != 0 and "unknown quality" in bad.output
