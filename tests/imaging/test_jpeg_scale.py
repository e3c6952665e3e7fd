"""JPEG sources decode at 3/8 where that covers the target, with the right pixels."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageChops, ImageStat, features

from app.imaging import jpeg_scale, pipeline, render
from app.settings import VariantSpec

from .samples import encode, noisy_rgb

SOURCE = (1601, 1199)  # odd sizes: libjpeg rounds 3/8 up (601x450)


def decoded_sizes(monkeypatch) -> list[tuple[int, int]]:
    """The size the pipeline decodes each source at (after any draft)."""
    sizes: list[tuple[int, int]] = []
    real = pipeline.to_working_mode

    def spy(im):  # type: ignore[no-untyped-def]
        im.load()
        sizes.append(im.size)
        return real(im)

    monkeypatch.setattr(pipeline, "to_working_mode", spy)
    return sizes


def reference(data: bytes, size: tuple[int, int], mode: str) -> Image.Image:
    """Full decode, then Lanczos: what the variant should look like."""
    im = Image.open(io.BytesIO(data))
    im.load()
    return im.convert(mode).resize(size, Image.Resampling.LANCZOS)


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return max(ImageStat.Stat(ImageChops.difference(a, b)).mean)


def card() -> Image.Image:
    return noisy_rgb(*SOURCE, noise=0.05)


SOURCES = {
    "rgb 4:2:0": lambda: encode(card(), "JPEG", quality=85),
    "rgb 4:4:4": lambda: encode(card(), "JPEG", quality=85, subsampling=0),
    "progressive": lambda: encode(card(), "JPEG", quality=85, progressive=True),
    "greyscale": lambda: encode(card().convert("L"), "JPEG", quality=85),
    "cmyk": lambda: encode(card().convert("CMYK"), "JPEG", quality=85),
}


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_a_target_within_three_eighths_is_decoded_at_three_eighths(
    kind, settings, monkeypatch
) -> None:
    """1601x1199 -> 560 wide: decoded at libjpeg's 3/8 (601x450, not Pillow's 1/2 = 801x600),
    and the variant matches a full decode + Lanczos as closely as one decoded at 1/2 does
    (a decode at any other size than libjpeg's would leave stale columns or fail)."""
    assert jpeg_scale.supported(), "libjpeg-turbo >= 2 decodes at 3/8 (Pillow wheels have 3.x)"
    data = SOURCES[kind]()
    sizes = decoded_sizes(monkeypatch)
    rendered = render(data, VariantSpec("webp", "high", 560), settings)
    assert sizes == [(601, 450)]
    assert (rendered.width, rendered.height) == (560, 419)
    mode = "L" if kind == "greyscale" else "RGB"
    ref = reference(data, (560, 419), mode)
    ours = mean_difference(Image.open(io.BytesIO(rendered.data)).convert(mode), ref)
    monkeypatch.setattr(jpeg_scale, "supported", lambda: False)
    half = render(data, VariantSpec("webp", "high", 560), settings)
    assert sizes[-1] == (801, 600)
    at_half = mean_difference(Image.open(io.BytesIO(half.data)).convert(mode), ref)
    assert ours < 2.5 and ours < at_half + 0.3, (ours, at_half)


def test_a_target_above_three_eighths_stays_at_half(settings, monkeypatch) -> None:
    data = SOURCES["rgb 4:2:0"]()
    sizes = decoded_sizes(monkeypatch)
    rendered = render(data, VariantSpec("jpeg", "high", 640), settings)  # 3/8 = 601 < 640
    assert sizes == [(801, 600)] and (rendered.width, rendered.height) == (640, 479)
    sizes.clear()
    render(data, VariantSpec("jpeg", "high", 320), settings)  # 1/4 = 401 covers 320
    assert sizes == [(401, 300)]


def test_without_support_pillows_own_draft_is_kept(settings, monkeypatch) -> None:
    monkeypatch.setattr(jpeg_scale, "supported", lambda: False)
    data = SOURCES["rgb 4:2:0"]()
    sizes = decoded_sizes(monkeypatch)
    rendered = render(data, VariantSpec("webp", "high", 560), settings)
    assert sizes == [(801, 600)] and (rendered.width, rendered.height) == (560, 419)


def test_the_probe_rejects_a_libjpeg_that_does_not_scale_by_three_eighths(monkeypatch) -> None:
    """With denominator 2, libjpeg decodes the probe at 1/2 (4 rows where 3 were asked):
    the probe must say no, as it would for a libjpeg without 3/8 scaling."""
    assert jpeg_scale.supported.__wrapped__() is True
    monkeypatch.setattr(jpeg_scale, "DENOMINATOR", 2)
    assert jpeg_scale.supported.__wrapped__() is False


def test_an_old_or_other_libjpeg_is_never_asked(monkeypatch) -> None:
    monkeypatch.setattr(features, "version", lambda name: "1.5.3")
    assert jpeg_scale.supported.__wrapped__() is False
    monkeypatch.setattr(features, "check_feature", lambda name: False)
    assert jpeg_scale.supported.__wrapped__() is False


def test_a_pillow_without_named_tiles_is_never_asked(monkeypatch) -> None:
    monkeypatch.delattr(jpeg_scale.ImageFile, "_Tile")
    assert jpeg_scale.supported.__wrapped__() is False


def test_output_size_is_libjpegs_rounding() -> None:
    assert jpeg_scale.output_size((4000, 3000)) == (1500, 1125)
    assert jpeg_scale.output_size((1601, 1199)) == (601, 450)
    assert jpeg_scale.output_size((1, 1)) == (1, 1)
