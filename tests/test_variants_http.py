"""Variant routes end to end through the app: formats, sizes, headers, tiers, limits."""

from __future__ import annotations

import io
import threading
import time

import pytest
from PIL import Image

from app import create_app, metrics
from tests import images
from tests.conftest import auth, make_settings


def transforms() -> float:
    return sum(
        s.value
        for m in metrics.TRANSFORMS.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )


def lookups(tier: str) -> float:
    return metrics.CACHE_LOOKUPS.labels(tier=tier)._value.get()


def upload(client, data: bytes, private: bool = False) -> dict:  # type: ignore[no-untyped-def]
    r = client.post(f"/v1/images?private={str(private).lower()}", data=data, headers=auth())
    assert r.status_code == 201, r.json
    return r.json


SOURCES = {
    "jpeg": lambda: images.jpeg(900, 600, seed=1),
    "png-alpha": lambda: images.png(700, 500, seed=2),
    "gif": lambda: images.gif(500, 400, seed=3),
    "webp": lambda: images.webp(650, 430, seed=4),
}
PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_format_preset_and_width_over_http(client, source):
    data = SOURCES[source]()
    doc = upload(client, data)
    src_w, src_h = doc["width"], doc["height"]
    for fmt in ("jpeg", "webp", "avif"):
        for quality in ("high", "low"):
            for width in (None, 160, 640, 960):
                path = f"/{doc['hash']}/{fmt}/{quality}" + (f"/{width}" if width else "")
                r = client.get(path)
                assert r.status_code == 200, (path, r.json)
                assert r.headers["Content-Type"] == f"image/{fmt}"
                assert r.headers["Content-Length"] == str(len(r.data))
                assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
                assert "Vary" not in r.headers
                im = Image.open(io.BytesIO(r.data))
                assert im.format == PIL_FORMAT[fmt]
                expected_w = min(width, src_w) if width else src_w  # never upscaled
                assert im.width == expected_w, path
                assert abs(im.height - round(src_h * expected_w / src_w)) <= 1, path


def test_auto_negotiation_and_vary(client):
    doc = upload(client, images.jpeg(300, 200))
    table = [
        ("image/avif,image/webp,*/*", "avif"),
        ("image/webp,*/*;q=0.8", "webp"),
        ("image/avif;q=0,image/webp", "webp"),
        ("*/*", "jpeg"),
        ("image/*", "jpeg"),
        (None, "jpeg"),
    ]
    for accept, fmt in table:
        headers = {"Accept": accept} if accept else {}
        r = client.get(f"/{doc['hash']}/auto/high/160", headers=headers)
        assert r.status_code == 200
        assert r.headers["Content-Type"] == f"image/{fmt}", accept
        assert r.headers["Vary"] == "Accept"
    webp = client.get(f"/{doc['hash']}/webp/high/160")
    auto = client.get(f"/{doc['hash']}/auto/high/160", headers={"Accept": "image/webp"})
    assert auto.data == webp.data  # the cache key holds the chosen format


def test_etag_304_and_head(client):
    doc = upload(client, images.jpeg(300, 200))
    path = f"/{doc['hash']}/webp/low/320"
    r = client.get(path)
    etag = r.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert client.get(path, headers={"If-None-Match": etag}).status_code == 304
    head = client.head(path)
    assert head.status_code == 200 and head.data == b""
    assert head.headers["Content-Length"] == r.headers["Content-Length"]
    assert head.headers["ETag"] == etag
    assert client.get(f"/{doc['hash']}/webp/high/320").headers["ETag"] != etag


def test_error_codes_on_variant_routes(client):
    doc = upload(client, images.jpeg(100, 100))
    h = doc["hash"]
    cases = [
        (f"/{h}/gif/high", 400, "unknown_format"),
        (f"/{h}/webp/ultra", 400, "unknown_quality"),
        (f"/{h}/webp/high/123", 400, "unknown_width"),
        (f"/{h}/webp/high/0640", 400, "unknown_width"),
        (f"/{'0' * 64}/webp/high", 404, "not_found"),
        (f"/{h.upper()}/webp/high", 404, "not_found"),
        (f"/{h[:-1]}/webp/high", 404, "not_found"),
    ]
    for path, status, code in cases:
        r = client.get(path)
        assert (r.status_code, r.json["error"]["code"]) == (status, code), path
    client.delete(f"/v1/images/{doc['id']}", headers=auth())
    assert client.get(f"/{h}/webp/high").status_code == 410
    priv = upload(client, images.jpeg(100, 100, seed=5), private=True)
    r = client.get(f"/{priv['hash']}/webp/high")
    assert r.status_code == 403 and r.json["error"]["code"] == "private"


def test_tiers_memory_then_store_then_transform(data_dir):
    settings = make_settings(data_dir)
    app1 = create_app(settings)
    c1 = app1.test_client()
    doc = upload(c1, images.jpeg(800, 600))
    path = f"/{doc['hash']}/webp/high/640"
    before = transforms()
    first = c1.get(path)
    assert transforms() == before + 1
    cache_hits = lookups("cache")
    assert c1.get(path).data == first.data
    assert lookups("cache") == cache_hits + 1 and transforms() == before + 1
    # a new process (empty memory cache) finds the stored variant
    app2 = create_app(settings)
    store_hits = lookups("store")
    assert app2.test_client().get(path).data == first.data
    assert lookups("store") == store_hits + 1 and transforms() == before + 1
    stored = [p for p in (data_dir / "blobs" / "variants").rglob("*") if p.is_file()]
    assert len(stored) == 1 and stored[0].read_bytes() == first.data


def test_encoder_settings_change_the_key(data_dir):
    app1 = create_app(make_settings(data_dir))
    doc = upload(app1.test_client(), images.jpeg(400, 300))
    path = f"/{doc['hash']}/jpeg/high/320"
    a = app1.test_client().get(path)
    presets = {"high": {"jpeg": {"quality": 40}}}
    app2 = create_app(make_settings(data_dir, presets=_merged(presets)))
    b = app2.test_client().get(path)
    assert a.headers["ETag"] != b.headers["ETag"]
    assert len(b.data) < len(a.data)


def _merged(overrides):  # type: ignore[no-untyped-def]
    from app.settings import _presets_from

    return _presets_from(overrides)


def test_transform_of_a_corrupted_original_is_refused(client, data_dir):
    doc = upload(client, images.jpeg(200, 200, seed=8))
    (blob,) = [p for p in (data_dir / "blobs" / "sha256").rglob("*") if p.is_file()]
    raw = bytearray(blob.read_bytes())
    raw[-10] ^= 0xFF
    blob.write_bytes(bytes(raw))
    before = transforms()
    r = client.get(f"/{doc['hash']}/webp/high/160")
    assert r.status_code == 500 and r.json["error"]["code"] == "integrity_failure"
    assert transforms() == before


def test_access_recorded_once_per_interval(client, services):
    doc = upload(client, images.jpeg(120, 90))
    writes = metrics.ACCESS_WRITES._value.get()
    for _ in range(10):
        client.get(f"/{doc['hash']}/webp/high/160")
        client.get(f"/{doc['hash']}/original")
    assert metrics.ACCESS_WRITES._value.get() == writes  # set at upload, within the interval
    later = time.time() + 7200  # two hours on: past the one-hour interval
    services.service.clock = lambda: later
    for _ in range(10):
        client.get(f"/{doc['hash']}/webp/high/160")
    assert metrics.ACCESS_WRITES._value.get() == writes + 1
    assert services.meta.get_object(doc["hash"]).last_accessed_at == later


def test_transform_bound_and_time_limit(data_dir, monkeypatch):
    import app.variant_service as vs

    real_render = vs.render
    gate = threading.Event()
    entered = threading.Event()

    def slow_render(*args, **kwargs):  # type: ignore[no-untyped-def]
        entered.set()
        gate.wait(5)
        return real_render(*args, **kwargs)

    monkeypatch.setattr(vs, "render", slow_render)
    app = create_app(
        make_settings(data_dir, transform_concurrency=1, transform_timeout_seconds=0.5)
    )
    c = app.test_client()
    doc = upload(c, images.jpeg(300, 200))
    results: dict[str, object] = {}

    def get(path: str) -> None:
        results[path] = app.test_client().get(path)

    first = threading.Thread(target=get, args=(f"/{doc['hash']}/webp/high/160",))
    first.start()
    assert entered.wait(10)  # the only transform slot is taken
    busy = c.get(f"/{doc['hash']}/jpeg/high/160")
    assert busy.status_code == 503 and busy.json["error"]["code"] == "busy"
    assert int(busy.headers["Retry-After"]) > 0
    first.join()
    slow = results[f"/{doc['hash']}/webp/high/160"]
    assert slow.status_code == 503 and slow.json["error"]["code"] == "timeout"  # type: ignore[attr-defined]
    gate.set()
    # the abandoned work finishes and stores its result; the server keeps serving
    deadline = time.time() + 10
    while time.time() < deadline:
        r = c.get(f"/{doc['hash']}/webp/high/160")
        if r.status_code == 200:
            break
        time.sleep(0.1)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/webp"
