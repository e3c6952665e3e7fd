"""URL parts -> VariantSpec, and the `auto` format's Accept negotiation."""

from __future__ import annotations

import pytest

from app.errors import BadRequest
from app.imaging import CONTENT_TYPES, PIPELINE_VERSION, negotiate, parse_variant
from app.settings import VariantSpec


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


def test_content_types_and_version() -> None:
    assert CONTENT_TYPES == {"jpeg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}
    assert isinstance(PIPELINE_VERSION, int) and PIPELINE_VERSION >= 1
