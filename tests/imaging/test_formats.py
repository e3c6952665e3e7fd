"""Sniffing: only JPEG, PNG, GIF and WebP pass, decided by magic bytes alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from app.errors import UnsupportedMediaType
from app.imaging import REGISTRY, sniff, sniff_file
from app.imaging.formats import detect_mime

from .samples import alpha_rgba, encode, noisy_rgb

ALLOWED = {
    "image/jpeg": lambda: encode(noisy_rgb(32, 24), "JPEG"),
    "image/png": lambda: encode(alpha_rgba(32, 24), "PNG"),
    "image/gif": lambda: encode(Image.new("P", (32, 24)), "GIF"),
    "image/webp": lambda: encode(noisy_rgb(32, 24), "WEBP"),
}

HOSTILE = {
    "empty": b"",
    "one byte": b"\xff",
    "text": b"just some text, not an image\n",
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>',
    "svg with xml prolog": b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
    "html": b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
    "pdf": encode(Image.new("RGB", (8, 8)), "PDF"),
    "tiff": encode(Image.new("RGB", (8, 8)), "TIFF"),
    "bmp": encode(Image.new("RGB", (8, 8)), "BMP"),
    "ico": encode(Image.new("RGB", (16, 16)), "ICO"),
    "avif source": encode(Image.new("RGB", (8, 8)), "AVIF"),
    "png signature only": b"\x89PNG\r\n\x1a\n",
    "zip": b"PK\x03\x04" + b"\0" * 40,
}


@pytest.mark.parametrize("mime", sorted(ALLOWED))
def test_allowed_types_sniffed_from_bytes(mime: str) -> None:
    fmt = sniff(ALLOWED[mime]())
    assert fmt is REGISTRY[mime]
    assert fmt.mime == mime


def test_registry_is_exactly_the_allowlist() -> None:
    assert set(REGISTRY) == set(ALLOWED)
    assert {f.pil_format for f in REGISTRY.values()} == {"JPEG", "PNG", "GIF", "WEBP"}
    assert {f.extension for f in REGISTRY.values()} == {"jpg", "png", "gif", "webp"}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_everything_else_is_415_naming_the_detected_type(name: str) -> None:
    data = HOSTILE[name]
    with pytest.raises(UnsupportedMediaType) as info:
        sniff(data)
    assert info.value.status == 415
    assert detect_mime(data) in info.value.message


def test_sniff_file_reads_the_head_of_a_file(tmp_path) -> None:
    path = tmp_path / "upload.bin"  # the name says nothing; the bytes decide
    path.write_bytes(ALLOWED["image/gif"]())
    assert sniff_file(str(path)).mime == "image/gif"
    path.write_bytes(HOSTILE["svg"])
    with pytest.raises(UnsupportedMediaType):
        sniff_file(str(path))


def test_sniffing_is_safe_from_many_threads() -> None:
    samples = [(mime, make()) for mime, make in ALLOWED.items()] * 50

    def check(item: tuple[str, bytes]) -> bool:
        mime, data = item
        return sniff(data).mime == mime

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(check, samples))
