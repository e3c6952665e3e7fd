"""URL parts -> VariantSpec, the `auto` format's Accept negotiation, and what the stored
variant's key and ETag depend on (pipeline version, encoder options)."""

from __future__ import annotations

import pytest

from app import create_app, variant_service
from app.errors import BadRequest
from app.imaging import CONTENT_TYPES, PIPELINE_VERSION, negotiate, parse_variant
from app.settings import Settings, VariantSpec
from app.variant_service import etag_for_key, variant_storage_key
from tests import images
from tests.conftest import auth, make_settings


def test_valid_parts(settings) -> None:
    assert parse_variant("webp", "high", "640", settings) == VariantSpec("webp", "high", 640)
    assert parse_variant("avif", "low", None, settings) == VariantSpec("avif", "low", None)
    assert parse_variant("jpeg", "high", "2560", settings) == VariantSpec("jpeg", "high", 2560)


@pytest.mark.parametrize("fmt", ["png", "gif", "auto", "JPEG", "jpg", "", "webp ", "avif\0"])
def test_unknown_format(settings, fmt: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_variant(fmt, "high", None, settings)
    assert info.value.code == "unknown_format"
    assert info.value.status == 400


@pytest.mark.parametrize("quality", ["medium", "HIGH", "", "high/"])
def test_unknown_quality(settings, quality: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_variant("jpeg", quality, None, settings)
    assert info.value.code == "unknown_quality"


@pytest.mark.parametrize(
    "width",
    ["0640", "+640", "640.0", "-640", " 640", "640 ", "641", "0", "", "6e2", "٦٤٠", "1" * 5000],
)
def test_unknown_width(settings, width: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_variant("jpeg", "high", width, settings)
    assert info.value.code == "unknown_width"


def test_custom_preset_and_widths(settings) -> None:
    custom = settings.with_overrides(
        widths=(100,), presets={**settings.presets, "tiny": settings.presets["low"]}
    )
    assert parse_variant("webp", "tiny", "100", custom) == VariantSpec("webp", "tiny", 100)
    with pytest.raises(BadRequest):
        parse_variant("webp", "tiny", "640", custom)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "jpeg"),
        ("", "jpeg"),
        ("*/*", "jpeg"),
        ("image/*", "jpeg"),
        ("image/*,*/*;q=0.8", "jpeg"),
        ("image/avif", "avif"),
        ("image/webp", "webp"),
        ("image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8", "avif"),
        ("image/webp,*/*", "webp"),
        ("image/avif;q=0", "jpeg"),
        ("image/avif;q=0.0", "jpeg"),
        ("image/avif;q=0.000", "jpeg"),
        ("image/avif;q=0, image/webp;q=0.5", "webp"),
        ("image/avif;q=0,image/webp;q=0", "jpeg"),
        ("image/avif;q=0.001", "avif"),
        ("image/webp;q=1.0", "webp"),
        ("IMAGE/AVIF", "avif"),
        ("Image/WebP;Q=0.9", "webp"),
        ("  image/webp  ;  q=0.7 , text/html", "webp"),
        ("image/avif ; q=0.5", "avif"),
        ("text/html,application/xhtml+xml", "jpeg"),
        ("image/avif;q=abc", "jpeg"),  # malformed q: entry ignored
        ("image/avif;q=2,image/webp", "webp"),
        ("image/avif;q=-1", "jpeg"),
        ("image/avif;q=nan", "jpeg"),
        ("image/avif;q=", "jpeg"),
        ("image/avif, image/avif;q=0", "jpeg"),  # an explicit refusal wins
        ("image/avif-extra", "jpeg"),
        ("image/avif;level=1;q=0.4", "avif"),
        (",,;;,", "jpeg"),
    ],
)
def test_negotiate(accept: str | None, expected: str) -> None:
    assert negotiate(accept) == expected


def test_content_types() -> None:
    assert CONTENT_TYPES == {"jpeg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}


def _with_encoder(settings: Settings, preset: str, fmt: str, **options: int) -> Settings:
    presets = {name: dict(per_format) for name, per_format in settings.presets.items()}
    presets[preset][fmt] = {**presets[preset][fmt], **options}
    return settings.with_overrides(presets=presets)


def test_variant_key_and_etag_change_with_the_pipeline_version(settings, monkeypatch) -> None:
    digest = "ab" * 32
    spec = VariantSpec("webp", "high", 640)
    key = variant_storage_key(digest, spec, settings)
    assert variant_storage_key(digest, spec, settings) == key  # same inputs, same key
    assert key.startswith(f"variant:{digest}/v{PIPELINE_VERSION}-")
    # the key is built in app.variant_service from its own name for the constant
    monkeypatch.setattr(variant_service, "PIPELINE_VERSION", PIPELINE_VERSION + 1)
    bumped = variant_storage_key(digest, spec, settings)
    assert bumped.startswith(f"variant:{digest}/v{PIPELINE_VERSION + 1}-")
    assert bumped != key and etag_for_key(bumped) != etag_for_key(key)
    # ... and only the version part moved
    assert bumped.split("/", 2)[2] == key.split("/", 2)[2]


def test_variant_key_and_etag_change_with_the_encoder_options(settings) -> None:
    digest = "cd" * 32
    spec = VariantSpec("webp", "high", 640)
    key = variant_storage_key(digest, spec, settings)
    for options in ({"quality": 81}, {"method": 4}):
        changed = _with_encoder(settings, "high", "webp", **options)
        other = variant_storage_key(digest, spec, changed)
        assert other != key and etag_for_key(other) != etag_for_key(key), options
        # the other formats and presets are not invalidated by it
        for untouched in (VariantSpec("jpeg", "high", 640), VariantSpec("webp", "low", 640)):
            assert variant_storage_key(digest, untouched, changed) == variant_storage_key(
                digest, untouched, settings
            )
    # the same options again (a rebuilt Settings) give the same key
    same = _with_encoder(settings, "high", "webp", **settings.presets["high"]["webp"])
    assert variant_storage_key(digest, spec, same) == key


def test_served_etag_follows_the_pipeline_version(data_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_settings(data_dir))  # the API keys of tests/conftest.py
    client = app.test_client()
    r = client.post("/v1/images", data=images.jpeg(64, 48, seed=8), headers=auth())
    assert r.status_code == 201, r.json
    doc = r.json
    path = f"/{doc['hash']}/webp/high/160"
    first = client.get(path)
    assert first.status_code == 200
    etag = first.headers["ETag"]
    assert client.get(path, headers={"If-None-Match": etag}).status_code == 304
    monkeypatch.setattr(variant_service, "PIPELINE_VERSION", PIPELINE_VERSION + 1)
    again = client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 200 and again.headers["ETag"] != etag  # a client's copy is stale
    app.config["IMAGE_ORIGIN"].close()
