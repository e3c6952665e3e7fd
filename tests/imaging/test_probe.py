"""Probe: limits before any decode, then a decode check; only domain errors ever escape."""

from __future__ import annotations

import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from app.errors import DomainError, TooManyPixels, Unprocessable, UnsupportedMediaType
from app.imaging import ProbeResult, probe
from app.imaging.decode import ensure_pillow_limit

from . import test_formats
from .samples import (
    alpha_rgba,
    animated_gif,
    animated_webp,
    encode,
    gif_claiming,
    jpeg_claiming,
    noisy_rgb,
    png_claiming,
    quadrants,
)


def test_probe_reads_a_file_path(tmp_path, settings) -> None:
    path = tmp_path / "photo"
    path.write_bytes(encode(noisy_rgb(300, 200), "JPEG"))
    assert probe(str(path), settings) == ProbeResult("image/jpeg", 300, 200, 1, False)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (encode(noisy_rgb(64, 48), "JPEG", progressive=True), ("image/jpeg", 64, 48, 1, False)),
        (encode(alpha_rgba(64, 48), "PNG"), ("image/png", 64, 48, 1, False)),
        (encode(Image.new("P", (64, 48)), "GIF"), ("image/gif", 64, 48, 1, False)),
        (encode(noisy_rgb(64, 48), "WEBP"), ("image/webp", 64, 48, 1, False)),
        (encode(alpha_rgba(64, 48), "WEBP", lossless=True), ("image/webp", 64, 48, 1, False)),
        (animated_gif(7), ("image/gif", 60, 40, 7, True)),
        (animated_webp(3), ("image/webp", 60, 40, 3, True)),
        (encode(Image.new("L", (64, 48), 90), "JPEG"), ("image/jpeg", 64, 48, 1, False)),
        (encode(Image.new("CMYK", (64, 48)), "JPEG"), ("image/jpeg", 64, 48, 1, False)),
    ],
)
def test_probe_results(settings, data: bytes, expected: tuple) -> None:
    assert probe(data, settings) == ProbeResult(*expected)


def test_probe_reports_the_displayed_size_after_exif_rotation(settings) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    data = encode(quadrants(40, 20), "JPEG", exif=exif.tobytes())
    assert probe(data, settings) == ProbeResult("image/jpeg", 20, 40, 1, False)


@pytest.mark.parametrize("name", sorted(test_formats.HOSTILE))
def test_hostile_types_are_415(settings, name: str) -> None:
    with pytest.raises(UnsupportedMediaType):
        probe(test_formats.HOSTILE[name], settings)


def _bomb_check(data: bytes, settings) -> TooManyPixels:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(TooManyPixels) as info:
            probe(data, settings)
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # No pixel buffer was allocated (it would be gigabytes) and no decoding happened.
    assert peak < 1_000_000
    assert elapsed < 5  # decoding the bomb would take minutes; generous for a loaded machine
    assert info.value.status == 422 and info.value.code == "too_many_pixels"
    return info.value


def test_png_ihdr_claiming_60000_squared(settings) -> None:
    _bomb_check(png_claiming(60000, 60000), settings)


def test_jpeg_sof_claiming_65000_squared(settings) -> None:
    _bomb_check(jpeg_claiming(65000, 65000), settings)


def test_gif_logical_screen_65535_squared(settings) -> None:
    # Pillow decodes GIF frames into a canvas of the logical screen size, so that size is the
    # real cost: too_many_pixels, not undecodable.
    _bomb_check(gif_claiming(65535, 65535), settings)


@pytest.mark.parametrize("make", [png_claiming, jpeg_claiming, gif_claiming])
def test_just_over_our_limit_but_under_pillows(settings, make) -> None:
    error = _bomb_check(make(8000, 7000), settings)  # 56 MP > 50 MP, < Pillow's 89 MP
    assert "56000000" in error.message


def test_limit_follows_settings(settings) -> None:
    data = encode(noisy_rgb(200, 100), "PNG")
    assert probe(data, settings.with_overrides(max_pixels=20_000)).width == 200
    with pytest.raises(TooManyPixels):
        probe(data, settings.with_overrides(max_pixels=19_999))


def test_frames_count_towards_the_pixel_limit(settings) -> None:
    data = animated_gif(5, size=(60, 40))  # 12,000 pixels over all frames
    assert probe(data, settings.with_overrides(max_pixels=12_000)).frames == 5
    with pytest.raises(TooManyPixels):
        probe(data, settings.with_overrides(max_pixels=11_999))


@pytest.mark.parametrize("make", [animated_gif, animated_webp])
def test_frame_limit(settings, make) -> None:
    assert probe(make(4), settings.with_overrides(max_frames=4)).frames == 4
    with pytest.raises(TooManyPixels) as info:
        probe(make(5), settings.with_overrides(max_frames=4))
    assert "frames" in info.value.message


def test_frame_counting_stops_past_the_limit(settings) -> None:
    # 20,000 one-pixel frames: counting must stop after max_frames + 1, not walk them all.
    frames = [Image.new("L", (1, 1), i % 256) for i in range(20_000)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], optimize=False)
    started = time.perf_counter()
    with pytest.raises(TooManyPixels):
        probe(data, settings.with_overrides(max_frames=10))
    assert time.perf_counter() - started < 0.2


@pytest.mark.parametrize(
    "data",
    [
        png_claiming(0, 10),
        png_claiming(10, 0),
        jpeg_claiming(0, 16),
        jpeg_claiming(16, 0),
    ],
    ids=["png-0-wide", "png-0-high", "jpeg-0-wide", "jpeg-0-high"],
)
def test_zero_sized_is_422(settings, data: bytes) -> None:
    with pytest.raises(Unprocessable) as info:
        probe(data, settings)
    assert info.value.status == 422


BASELINE = encode(noisy_rgb(200, 150), "JPEG", quality=90)
PROGRESSIVE = encode(noisy_rgb(200, 150), "JPEG", quality=90, progressive=True)
PNG = encode(noisy_rgb(200, 150), "PNG")
GIF = animated_gif(3)
WEBP = encode(noisy_rgb(200, 150), "WEBP")


@pytest.mark.parametrize(
    "data",
    [
        BASELINE[: len(BASELINE) // 2],
        BASELINE[:-100],
        PROGRESSIVE[: len(PROGRESSIVE) // 2],
        PNG[: len(PNG) // 2],
        GIF[: len(GIF) - 40],
        WEBP[: len(WEBP) // 2],
    ],
    ids=[
        "jpeg-half",
        "jpeg-tail",
        "progressive-half",
        "png-half",
        "gif-tail",
        "webp-half",
    ],
)
def test_truncated_is_undecodable(settings, data: bytes) -> None:
    with pytest.raises(Unprocessable) as info:
        probe(data, settings)
    assert info.value.code == "undecodable"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8\xff\xe0" + b"garbage" * 100,
        b"\xff\xd8\xff\xdb" + bytes(range(256)) * 4,
        b"GIF89a" + b"\xff" * 200,
        b"RIFF\x00\x01\x00\x00WEBPVP8 " + b"\x00" * 64,
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\xff" * 60,
    ],
    ids=["jpeg-app0-garbage", "jpeg-dqt-garbage", "gif-garbage", "webp-garbage", "png-garbage"],
)
def test_magic_followed_by_garbage_is_undecodable(settings, data: bytes) -> None:
    with pytest.raises(Unprocessable) as info:
        probe(data, settings)
    assert info.value.code == "undecodable"
    assert "/" not in info.value.message  # never a server path or Pillow internals


def test_errors_never_name_server_paths(tmp_path, settings) -> None:
    path = tmp_path / "secret-dir" / "upload"
    path.parent.mkdir()
    path.write_bytes(BASELINE[:300])
    with pytest.raises(Unprocessable) as info:
        probe(str(path), settings)
    assert "secret-dir" not in info.value.message


VALID = [BASELINE, PROGRESSIVE, PNG, GIF, WEBP, animated_webp(2)]


@hsettings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    index=st.integers(0, len(VALID) - 1),
    cut=st.integers(0, 10_000),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
)
def test_mangled_inputs_raise_only_domain_errors(settings, index, cut, edits) -> None:
    data = bytearray(VALID[index])
    for position, value in edits:
        data[position % len(data)] = value
    data = data[: max(1, len(data) - cut % len(data))]
    try:
        result = probe(bytes(data), settings)
    except DomainError:
        return
    assert result.width > 0 and result.height > 0


def test_apng_frames_are_counted(settings) -> None:
    frames = [Image.new("RGB", (30, 20), (80 * i, 0, 0)) for i in range(3)]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50)
    assert probe(data, settings) == ProbeResult("image/png", 30, 20, 3, True)


def test_pillow_limit_is_raised_to_ours_but_never_lowered(monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    ensure_pillow_limit(5000)
    assert Image.MAX_IMAGE_PIXELS == 5000
    ensure_pillow_limit(10)
    assert Image.MAX_IMAGE_PIXELS == 5000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # someone disabled it: leave it so
    ensure_pillow_limit(10)
    assert Image.MAX_IMAGE_PIXELS is None


def test_our_limit_decides_even_with_pillows_check_disabled(monkeypatch, settings) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(TooManyPixels):
        probe(png_claiming(60000, 60000), settings)
