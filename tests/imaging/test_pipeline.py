"""render(): right format, size, orientation, colours, alpha, animation; no metadata out."""

from __future__ import annotations

import functools
import io

import pytest
from PIL import Image, ImageCms, ImageOps, JpegImagePlugin

from app.errors import BadRequest, TooManyPixels, Unprocessable, UnsupportedMediaType
from app.imaging import Rendered, encoders, pipeline, render
from app.imaging.formats import detect_mime
from app.imaging.pipeline import plan_size
from app.settings import VariantSpec

from . import test_formats
from .samples import (
    ADOBE_GAMMA,
    ADOBE_RGB_D50,
    SRGB_D50,
    alpha_rgba,
    animated_gif,
    animated_webp,
    decode,
    encode,
    expected_srgb,
    icc_profile,
    jpeg_claiming,
    noisy_rgb,
    png_claiming,
    quadrants,
)

FORMATS = ("jpeg", "webp", "avif")
MIME = {"jpeg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}
SOURCE_SIZE = (500, 333)
SOURCES = {
    "jpeg": encode(noisy_rgb(*SOURCE_SIZE), "JPEG", quality=90),
    "png-alpha": encode(alpha_rgba(*SOURCE_SIZE), "PNG"),
    "gif": encode(noisy_rgb(*SOURCE_SIZE).convert("P"), "GIF"),
    "webp": encode(noisy_rgb(*SOURCE_SIZE), "WEBP"),
}


def close(actual, expected, tolerance: int = 8) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


# The large widths on sources wider than all of them, but only 80 rows high: few pixels, so the
# encoders (AVIF above all) stay quick.
SMALL_WIDTHS = (160, 320, 480, 640)
LARGE_WIDTHS = (960, 1280, 1920, 2560)
WIDE_SIZE = (2600, 80)


@functools.cache
def wide_sources() -> dict[str, bytes]:
    return {
        "jpeg": encode(noisy_rgb(*WIDE_SIZE), "JPEG", quality=90),
        "png-alpha": encode(alpha_rgba(*WIDE_SIZE), "PNG"),
        "gif": encode(noisy_rgb(*WIDE_SIZE).convert("P"), "GIF"),
        "webp": encode(noisy_rgb(*WIDE_SIZE), "WEBP"),
    }


def check_rendered(
    rendered: Rendered, fmt: str, source: str, size: tuple[int, int], width: int | None
) -> None:
    assert isinstance(rendered, Rendered)
    assert rendered.content_type == MIME[fmt]
    assert detect_mime(rendered.data) == MIME[fmt]
    out = decode(rendered.data)
    assert out.size == (rendered.width, rendered.height)
    expected_w = min(width or size[0], size[0])  # never upscaled
    assert out.width == expected_w
    assert out.height == round(size[1] * expected_w / size[0])  # aspect kept
    assert "exif" not in out.info and "icc_profile" not in out.info and "xmp" not in out.info
    if source == "png-alpha":
        assert out.mode == ("RGB" if fmt == "jpeg" else "RGBA")


def test_the_matrix_covers_every_configured_width(settings) -> None:
    assert sorted(SMALL_WIDTHS + LARGE_WIDTHS) == sorted(settings.widths)


@pytest.mark.parametrize("width", [*SMALL_WIDTHS, None])
@pytest.mark.parametrize("quality", ["high", "low"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_matrix(settings, source: str, fmt: str, quality: str, width: int | None) -> None:
    rendered = render(SOURCES[source], VariantSpec(fmt, quality, width), settings)
    check_rendered(rendered, fmt, source, SOURCE_SIZE, width)


@pytest.mark.parametrize("width", LARGE_WIDTHS)
@pytest.mark.parametrize("quality", ["high", "low"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_matrix_large_widths(settings, source: str, fmt: str, quality: str, width: int) -> None:
    rendered = render(wide_sources()[source], VariantSpec(fmt, quality, width), settings)
    assert rendered.width == width  # a 2600-wide source: really resized to the large width
    check_rendered(rendered, fmt, source, WIDE_SIZE, width)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_the_largest_width_does_not_upscale_a_smaller_source(settings, source, fmt) -> None:  # type: ignore[no-untyped-def]
    rendered = render(SOURCES[source], VariantSpec(fmt, "high", LARGE_WIDTHS[-1]), settings)
    assert rendered.width == SOURCE_SIZE[0]
    check_rendered(rendered, fmt, source, SOURCE_SIZE, LARGE_WIDTHS[-1])


def test_low_is_smaller_than_high(settings) -> None:
    for fmt in FORMATS:
        high = render(SOURCES["jpeg"], VariantSpec(fmt, "high", 480), settings)
        low = render(SOURCES["jpeg"], VariantSpec(fmt, "low", 480), settings)
        assert len(low.data) < len(high.data), fmt


def test_same_input_same_bytes(settings) -> None:
    for fmt in FORMATS:
        spec = VariantSpec(fmt, "high", 320)
        assert render(SOURCES["jpeg"], spec, settings) == render(SOURCES["jpeg"], spec, settings)


def test_path_and_bytes_give_the_same_result(tmp_path, settings) -> None:
    path = tmp_path / "original"
    path.write_bytes(SOURCES["webp"])
    spec = VariantSpec("jpeg", "high", 160)
    assert render(str(path), spec, settings) == render(SOURCES["webp"], spec, settings)


def test_jpeg_is_progressive_unless_the_preset_asks_for_baseline(settings) -> None:
    spec = VariantSpec("jpeg", "high", 320)
    out = decode(render(SOURCES["jpeg"], spec, settings).data)
    assert out.info.get("progressive") or out.info.get("progression")
    presets = {**settings.presets, "high": {**settings.presets["high"]}}
    presets["high"]["jpeg"] = {"quality": 85, "progressive": 0}
    baseline = decode(render(SOURCES["jpeg"], spec, settings.with_overrides(presets=presets)).data)
    assert not (baseline.info.get("progressive") or baseline.info.get("progression"))


def test_jpeg_huffman_tables_are_optimised() -> None:
    """Optimised tables: the same pixels in fewer bytes than libjpeg's standard tables give.
    (A progressive JPEG always gets optimised tables from libjpeg; this checks the baseline
    option, where only ``optimize`` makes the difference.)"""
    im = noisy_rgb(400, 300)
    data = encoders.encode(im, "jpeg", {"quality": 85, "progressive": 0})
    standard = io.BytesIO()
    im.save(standard, "JPEG", quality=85, optimize=False)
    assert len(data) < len(standard.getvalue())
    assert decode(data).tobytes() == decode(standard.getvalue()).tobytes()


def test_large_source_without_width_is_capped_at_max_output_side(settings) -> None:
    data = encode(noisy_rgb(1200, 300), "JPEG")
    capped = settings.with_overrides(max_output_side=600)
    for fmt in FORMATS:
        rendered = render(data, VariantSpec(fmt, "low", None), capped)
        assert (rendered.width, rendered.height) == (600, 150)


def test_width_of_a_narrow_source_keeps_its_size(settings) -> None:
    data = encode(noisy_rgb(100, 60), "PNG")
    rendered = render(data, VariantSpec("webp", "high", 2560), settings)
    assert (rendered.width, rendered.height) == (100, 60)


def test_jpeg_is_decoded_at_a_reduced_dct_scale(settings, monkeypatch) -> None:
    """A 12 MP JPEG -> 320: libjpeg is asked for a draft, and the pixels the pipeline then
    decodes are 1/8 of the source per side (4000x3000 -> 500x375), not 12 MP."""
    source_size = (4000, 3000)
    gradient = Image.linear_gradient("L").resize(source_size).convert("RGB")
    data = encode(gradient, "JPEG", quality=80)
    drafts: list[tuple[tuple[int, int], tuple[int, int]]] = []  # (asked for, size after)
    decoded: list[tuple[int, int]] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft
    real_working_mode = pipeline.to_working_mode

    def spy_draft(im, mode, size):  # type: ignore[no-untyped-def]
        result = real_draft(im, mode, size)
        drafts.append((size, im.size))
        return result

    def spy_working_mode(im):  # type: ignore[no-untyped-def]
        im.load()  # the decode: whatever scale the draft chose
        decoded.append(im.size)
        return real_working_mode(im)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy_draft)
    monkeypatch.setattr(pipeline, "to_working_mode", spy_working_mode)
    rendered = render(data, VariantSpec("webp", "high", 320), settings)
    assert (rendered.width, rendered.height) == (320, 240)
    assert drafts == [((320, 240), (500, 375))]
    assert decoded == [(500, 375)]
    # a PNG of the same size has no draft mode: decoded whole (the spy sees it too)
    decoded.clear()
    render(encode(gradient.resize((800, 600)), "PNG"), VariantSpec("webp", "high", 320), settings)
    assert decoded == [(800, 600)] and len(drafts) == 1


def test_plan_size_respects_format_limits(settings) -> None:
    tall = VariantSpec("webp", "high", 960)
    assert plan_size((1000, 40000), 1, tall, settings) == (410, 16383)
    assert plan_size((1000, 40000), 1, VariantSpec("jpeg", "high", 960), settings) == (960, 38400)
    assert plan_size((3, 1), 1, VariantSpec("jpeg", "high", 160), settings) == (3, 1)
    assert plan_size((5000, 1), 1, VariantSpec("jpeg", "high", 160), settings) == (160, 1)
    # rotated 90 degrees: the width asked for is the displayed width, planned in stored axes
    assert plan_size((300, 1000), 6, VariantSpec("jpeg", "high", 320), settings) == (96, 320)


# --- EXIF orientation ---------------------------------------------------------------------------
INVERSE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
QUADRANT_CENTRES = {
    (0.25, 0.25): (255, 0, 0),
    (0.75, 0.25): (0, 255, 0),
    (0.25, 0.75): (0, 0, 255),
    (0.75, 0.75): (255, 255, 255),
}


def _stored_for(orientation: int, container: str) -> bytes:
    """The quadrant card stored so that applying `orientation` shows it upright."""
    shown = quadrants(80, 40)
    stored = shown if INVERSE[orientation] is None else shown.transpose(INVERSE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, container, exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize("container", ["JPEG", "WEBP", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", FORMATS)
def test_exif_orientation_applied(settings, fmt: str, orientation: int, container: str) -> None:
    data = _stored_for(orientation, container)
    # The test card is right, according to Pillow's own exif_transpose:
    assert ImageOps.exif_transpose(decode(data)).size == (80, 40)
    for width in (None, 160):  # 160 > 80: never upscaled, still upright
        rendered = render(data, VariantSpec(fmt, "high", width), settings)
        out = decode(rendered.data).convert("RGB")
        assert out.size == (80, 40)
        for (fx, fy), colour in QUADRANT_CENTRES.items():
            pixel = out.getpixel((int(out.width * fx), int(out.height * fy)))
            assert close(pixel, colour, 40), (orientation, (fx, fy), pixel)
        assert not decode(rendered.data).getexif()


def test_orientation_with_downscale_gives_the_displayed_width(settings) -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    data = encode(noisy_rgb(600, 1000), "JPEG", exif=exif.tobytes())  # shown as 1000 x 600
    rendered = render(data, VariantSpec("webp", "high", 320), settings)
    assert (rendered.width, rendered.height) == (320, 192)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's warning; we just carry on
def test_broken_exif_is_ignored_not_fatal(settings) -> None:
    data = encode(noisy_rgb(64, 48), "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    assert render(data, VariantSpec("jpeg", "high", None), settings).width == 64


# --- metadata --------------------------------------------------------------------------------
def test_no_exif_xmp_or_icc_in_any_output(settings) -> None:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x8825] = {2: (51.0, 30.0, 0.0)}  # GPS latitude
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">SecretXmp</x:xmpmeta>'
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = noisy_rgb(120, 80)
    sources = [
        encode(image, "JPEG", exif=exif.tobytes(), icc_profile=srgb, xmp=xmp),
        encode(image, "WEBP", exif=exif.tobytes(), icc_profile=srgb, xmp=xmp),
        encode(image, "PNG", exif=exif.tobytes(), icc_profile=srgb),
    ]
    for data in sources:
        for fmt in FORMATS:
            for width in (None, 160):
                out = render(data, VariantSpec(fmt, "high", width), settings).data
                for marker in (b"Exif", b"SecretCam", b"SecretXmp", b"xmpmeta", b"ICC_PROFILE"):
                    assert marker not in out, (fmt, marker)
                # WebP ICC chunk; AVIF colr box of ICC type (its nclx colr box is not a profile)
                assert b"ICCP" not in out and b"colrprof" not in out and b"colrrICC" not in out
                decoded = decode(out)
                assert not decoded.getexif()
                assert "icc_profile" not in decoded.info


# --- colour ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_cmyk_jpeg_red_comes_out_red(settings, fmt: str) -> None:
    data = encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG", quality=95)
    assert decode(data).mode == "CMYK"
    out = decode(render(data, VariantSpec(fmt, "high", None), settings).data).convert("RGB")
    assert close(out.getpixel((32, 32)), (255, 0, 0))


@pytest.mark.parametrize("fmt", FORMATS)
def test_cmyk_with_srgb_looking_profile_still_becomes_rgb(settings, fmt: str) -> None:
    # An RGB profile on CMYK pixels is unusable: fall back to the plain conversion, no error.
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(Image.new("CMYK", (32, 32), (255, 0, 255, 0)), "JPEG", icc_profile=srgb)
    out = decode(render(data, VariantSpec(fmt, "high", None), settings).data).convert("RGB")
    assert close(out.getpixel((16, 16)), (0, 255, 0))


SWAPPED = icc_profile("swapped primaries", (SRGB_D50[1], SRGB_D50[0], SRGB_D50[2]), 2.2)
ADOBE = icc_profile("Adobe RGB like", ADOBE_RGB_D50, ADOBE_GAMMA)


@pytest.mark.parametrize("container", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_icc_profile_converted_to_srgb(settings, fmt: str, container: str) -> None:
    options = {"quality": 100} if container != "PNG" else {}
    if container == "JPEG":
        options["subsampling"] = 0
    red_under_swapped = encode(
        Image.new("RGB", (48, 48), (255, 0, 0)), container, icc_profile=SWAPPED, **options
    )
    out = decode(render(red_under_swapped, VariantSpec(fmt, "high", None), settings).data)
    assert close(out.convert("RGB").getpixel((24, 24)), (0, 255, 0), 10)

    colour = (100, 150, 100)
    adobe = encode(Image.new("RGB", (48, 48), colour), container, icc_profile=ADOBE, **options)
    out = decode(render(adobe, VariantSpec(fmt, "high", 320), settings).data)
    expected = expected_srgb(colour, ADOBE_RGB_D50, ADOBE_GAMMA)  # (66, 151, 97)
    assert close(out.convert("RGB").getpixel((24, 24)), expected, 6)


def test_icc_conversion_keeps_alpha(settings) -> None:
    data = encode(Image.new("RGBA", (32, 32), (255, 0, 0, 128)), "PNG", icc_profile=SWAPPED)
    out = decode(render(data, VariantSpec("webp", "high", None), settings).data)
    assert out.mode == "RGBA"
    assert close(out.getpixel((16, 16)), (0, 255, 0, 128), 10)


def test_garbage_icc_profile_is_ignored(settings) -> None:
    data = encode(Image.new("RGB", (32, 32), (10, 200, 30)), "PNG", icc_profile=b"not a profile")
    out = decode(render(data, VariantSpec("webp", "high", None), settings).data)
    assert close(out.getpixel((16, 16)), (10, 200, 30))


@pytest.mark.parametrize("fmt", FORMATS)
def test_sixteen_bit_png(settings, fmt: str) -> None:
    grey = Image.new("I;16", (40, 30), 40000)  # 40000 / 65535 of white
    data = encode(grey, "PNG")
    out = decode(render(data, VariantSpec(fmt, "high", None), settings).data)
    value = out.convert("L").getpixel((20, 15))
    assert abs(value - round(40000 / 257)) <= 3


def test_sixteen_bit_rgb_png(settings) -> None:
    rgb48 = bytes([0xC0, 0x00, 0x10, 0x00, 0x40, 0x00]) * (20 * 10)  # big-endian 16-bit
    png = encode(Image.frombytes("RGB", (20, 10), rgb48, "raw", "RGB;16B"), "PNG")
    out = decode(render(png, VariantSpec("webp", "high", None), settings).data)
    assert close(out.getpixel((10, 5)), (0xC0, 0x10, 0x40))


@pytest.mark.parametrize("fmt", FORMATS)
def test_grayscale_jpeg_stays_grey(settings, fmt: str) -> None:
    data = encode(noisy_rgb(200, 100).convert("L"), "JPEG")
    out = decode(render(data, VariantSpec(fmt, "high", 160), settings).data)
    if fmt in ("jpeg", "avif"):
        assert out.mode == "L"  # single channel kept where the format allows it
    rgb = out.convert("RGB")
    for xy in ((10, 10), (80, 40), (150, 70)):
        r, g, b = rgb.getpixel(xy)
        assert max(r, g, b) - min(r, g, b) <= 4


@pytest.mark.parametrize("fmt", FORMATS)
def test_la_png(settings, fmt: str) -> None:
    im = Image.new("LA", (40, 20), (200, 0))
    im.paste((50, 255), (0, 0, 20, 20))
    out = decode(render(encode(im, "PNG"), VariantSpec(fmt, "high", None), settings).data)
    rgba = out.convert("RGBA")
    assert close(rgba.getpixel((5, 10)), (50, 50, 50, 255))
    assert rgba.getpixel((35, 10))[3] == (255 if fmt == "jpeg" else 0)


# --- alpha -----------------------------------------------------------------------------------
def _palette_with_transparency() -> bytes:
    im = Image.new("P", (40, 20), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    im.paste(1, (0, 0, 20, 20))  # left half red, right half index 0 = transparent
    return encode(im, "PNG", transparency=0)


@pytest.mark.parametrize("fmt", ["webp", "avif"])
def test_palette_transparency_kept(settings, fmt: str) -> None:
    out = decode(
        render(_palette_with_transparency(), VariantSpec(fmt, "high", None), settings).data
    )
    assert out.mode == "RGBA"
    assert out.getpixel((35, 10))[3] == 0
    assert close(out.getpixel((5, 10)), (255, 0, 0, 255))


def test_palette_transparency_flattened_on_the_background_for_jpeg(settings) -> None:
    spec = VariantSpec("jpeg", "high", None)
    out = decode(render(_palette_with_transparency(), spec, settings).data)
    assert out.mode == "RGB"
    assert close(out.getpixel((35, 10)), (255, 255, 255))
    assert close(out.getpixel((5, 10)), (255, 0, 0))
    teal = settings.with_overrides(jpeg_background=(0, 128, 128))
    out = decode(render(_palette_with_transparency(), spec, teal).data)
    assert close(out.getpixel((35, 10)), (0, 128, 128))


def test_half_transparent_pixels_blend_with_the_background(settings) -> None:
    data = encode(Image.new("RGBA", (16, 16), (0, 0, 0, 128)), "PNG")
    out = decode(render(data, VariantSpec("jpeg", "high", None), settings).data)
    assert close(out.getpixel((8, 8)), (127, 127, 127), 3)


def test_opaque_alpha_channel_is_dropped(settings) -> None:
    data = encode(noisy_rgb(64, 64).convert("RGBA"), "PNG")
    for fmt in ("webp", "avif"):
        assert decode(render(data, VariantSpec(fmt, "high", None), settings).data).mode == "RGB"


# --- animation -------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [animated_gif, animated_webp])
def test_animation_kept_for_webp(settings, make) -> None:
    rendered = render(make(5, size=(300, 200)), VariantSpec("webp", "high", 160), settings)
    out = Image.open(io.BytesIO(rendered.data))
    assert out.n_frames == 5
    assert out.size == (160, 107)
    assert out.info.get("loop") == 0
    durations = []
    for index in range(out.n_frames):
        out.seek(index)
        out.load()
        durations.append(out.info["duration"])
    assert durations == [70] * 5 if make is animated_gif else [80] * 5
    out.seek(1)
    second = (0, 255, 0) if make is animated_gif else (40, 215, 0)
    assert close(out.convert("RGB").getpixel((80, 50)), second, 12)


@pytest.mark.parametrize("fmt", ["jpeg", "avif"])
def test_animation_first_frame_for_jpeg_and_avif(settings, fmt: str) -> None:
    rendered = render(animated_gif(5), VariantSpec(fmt, "high", None), settings)
    out = Image.open(io.BytesIO(rendered.data))
    assert getattr(out, "n_frames", 1) == 1
    assert close(out.convert("RGB").getpixel((30, 20)), (255, 0, 0), 12)


def test_gif_without_loop_block_plays_once_and_zero_delays_become_100ms(settings) -> None:
    frames = [Image.new("RGB", (20, 20), (100 * i, 0, 0)) for i in range(3)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=0)
    out = Image.open(io.BytesIO(render(data, VariantSpec("webp", "low", None), settings).data))
    assert out.n_frames == 3
    assert out.info["loop"] == 1
    out.load()
    assert out.info["duration"] == 100


def test_animation_limits_apply_when_rendering(settings) -> None:
    data = animated_gif(6)
    with pytest.raises(TooManyPixels):
        render(data, VariantSpec("webp", "high", None), settings.with_overrides(max_frames=5))
    with pytest.raises(TooManyPixels):
        render(data, VariantSpec("webp", "high", None), settings.with_overrides(max_pixels=14_000))
    # a still output needs only the first frame
    small = settings.with_overrides(max_frames=5, max_pixels=2_400)
    assert render(data, VariantSpec("jpeg", "high", None), small).width == 60


# --- errors ----------------------------------------------------------------------------------
def test_render_errors(settings) -> None:
    spec = VariantSpec("webp", "high", 320)
    with pytest.raises(UnsupportedMediaType):
        render(test_formats.HOSTILE["svg"], spec, settings)
    with pytest.raises(TooManyPixels):
        render(png_claiming(60000, 60000), spec, settings)
    with pytest.raises(TooManyPixels):
        render(jpeg_claiming(65000, 65000), spec, settings)
    with pytest.raises(Unprocessable):
        render(SOURCES["jpeg"][:2000], spec, settings)
    with pytest.raises(Unprocessable):
        render(b"\xff\xd8\xff\xe0" + b"garbage" * 100, spec, settings)
    with pytest.raises(BadRequest):
        render(SOURCES["jpeg"], VariantSpec("webp", "nope", 320), settings)
    with pytest.raises(BadRequest):
        render(SOURCES["jpeg"], VariantSpec("png", "high", 320), settings)


def test_missing_file_is_unprocessable(tmp_path, settings) -> None:
    with pytest.raises(Unprocessable):
        render(str(tmp_path / "gone"), VariantSpec("jpeg", "high", None), settings)


def test_apng_keeps_its_animation_in_webp(settings) -> None:
    frames = [Image.new("RGBA", (30, 20), (80 * i, 0, 0, 255)) for i in range(3)]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50)
    out = Image.open(io.BytesIO(render(data, VariantSpec("webp", "high", None), settings).data))
    assert out.n_frames == 3


def test_concurrent_renders_agree(settings) -> None:
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(source, fmt) for source in sorted(SOURCES) for fmt in FORMATS] * 3

    def run(job: tuple[str, str]) -> bytes:
        source, fmt = job
        return render(SOURCES[source], VariantSpec(fmt, "low", 160), settings).data

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(run, jobs))
    by_job: dict[tuple[str, str], set[bytes]] = {}
    for job, data in zip(jobs, results, strict=True):
        by_job.setdefault(job, set()).add(data)
    assert all(len(variants) == 1 for variants in by_job.values())
