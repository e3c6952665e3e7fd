"""Render a variant: open -> check limits -> plan size -> draft -> decode -> resize -> colour
(sRGB) -> orient -> alpha -> strip metadata -> encode, each a small step below.

The source is decoded once. JPEGs are decoded straight at a reduced DCT scale (draft mode), which
is what makes a 93 MP photo -> 1280 wide fit in a few tens of MB. Resizing happens before the
ICC transform and before rotating, so both run on the small image; the target size is planned
in the source's stored orientation so that the rotated result has the requested width.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from PIL import Image

from app.errors import BadRequest
from app.imaging import encoders, jpeg_scale
from app.imaging.colour import finish_alpha, to_srgb, to_working_mode
from app.imaging.decode import (
    TRANSPOSE_FOR_ORIENTATION,
    check_pixels,
    count_frames,
    open_source,
    orientation,
    oriented_size,
    pillow_errors,
)
from app.imaging.formats import SourceFormat
from app.imaging.variants import CONTENT_TYPES
from app.pools import LazyPool
from app.settings import Settings, VariantSpec

# Resampling: Lanczos after a cheap box reduction to within 2x of the target (Pillow's
# reducing_gap). Measured on 12 MP -> 640/320: 47 dB PSNR against plain Lanczos, 4-7x faster;
# it matters for PNG/GIF/WebP sources, which have no draft mode.
RESAMPLE = Image.Resampling.LANCZOS
REDUCING_GAP = 2.0
# JPEG draft asks for DRAFT_GAP x the target: 1.0 picks the smallest DCT scale that still covers
# the target. Measured on a 12 MP photo -> 1280: 74 ms decode+resize and 41 dB PSNR against a
# full decode + Lanczos; 2.0 (libvips' and Image.thumbnail's choice) gives 47 dB but 161 ms.
DRAFT_GAP = 1.0
# Resizes of at least SPLIT_MIN_PIXELS source pixels run as two bands, on two threads (in turn
# on a 1-core machine): a single cold request then uses both cores of a node (12 MP -> 1280: the
# 35 ms resize takes about 18 when the other core is free). Under full load it costs nothing
# more: the bands are the same work as the whole.
RESIZE_THREADS = 2 if (os.cpu_count() or 1) > 1 else 1
SPLIT_MIN_PIXELS = 1_000_000
SPLIT_MODES = frozenset({"L", "LA", "RGB", "RGBA", "CMYK"})
# Browsers show GIF frames of 0 or 10 ms for 100 ms; keep that timing when converting to WebP.
GIF_MIN_DURATION_MS = 20
GIF_DEFAULT_DURATION_MS = 100


@dataclass(frozen=True)
class Rendered:
    """Encoded variant bytes with their Content-Type and pixel size."""

    data: bytes
    content_type: str
    width: int
    height: int


def render(source: bytes | str, spec: VariantSpec, settings: Settings) -> Rendered:
    """Render ``spec`` from an original (bytes, or a file path).

    Raises UnsupportedMediaType (not an allowed type), TooManyPixels (over the limits),
    Unprocessable (Pillow cannot decode it), BadRequest (format or preset not configured);
    RuntimeError only if AVIF is asked for on a Pillow built without it.
    The same input, spec and settings always give the same bytes.
    """
    options = encoder_options(spec, settings)
    with open_source(source, settings) as (im, fmt), pillow_errors():
        check_pixels(im.width, im.height, 1, settings)
        animate = spec.format == "webp" and getattr(im, "is_animated", False)
        frames = count_frames(im, fmt, settings.max_frames) if animate else 1
        check_pixels(im.width, im.height, frames, settings)
        orient = orientation(im)
        target = plan_size(im.size, orient, spec, settings)
        if frames > 1:
            return _render_animation(im, fmt, frames, target, orient, options, settings)
        if fmt.pil_format == "JPEG":
            draft(im, target)
        out = prepare_frame(im, target, orient, spec.format, settings)
        data = encoders.encode(out, spec.format, options)
        return Rendered(data, CONTENT_TYPES[spec.format], out.width, out.height)


def encoder_options(spec: VariantSpec, settings: Settings) -> Mapping[str, int]:
    """The preset's options for the spec's format; BadRequest if the spec is not configured."""
    if spec.format not in CONTENT_TYPES:
        raise BadRequest(f"unknown format {spec.format!r}", code="unknown_format")
    if spec.format == "avif" and not encoders.avif_available():
        # A deployment problem, not the client's: fail loudly (500) instead of a 4xx.
        raise RuntimeError("this Pillow build has no AVIF encoder (features.check('avif'))")
    try:
        return settings.presets[spec.quality][spec.format]
    except KeyError:
        raise BadRequest(f"unknown quality {spec.quality!r}", code="unknown_quality") from None


def plan_size(
    size: tuple[int, int], orient: int, spec: VariantSpec, settings: Settings
) -> tuple[int, int]:
    """Output size in the source's *stored* orientation (what to resize to before rotating).

    Widths apply to the image as displayed. Never upscales; keeps the aspect ratio; without a
    width the longest side is capped at ``settings.max_output_side``; and the result always fits
    the output format's own limit (WebP: 16383 per side).
    """
    shown_w, shown_h = oriented_size(size, orient)
    if spec.width is not None and spec.width < shown_w:
        width, height = spec.width, _scaled(shown_h, spec.width, shown_w)
    else:
        width, height = shown_w, shown_h
    cap = encoders.MAX_SIDE[spec.format]
    if spec.width is None:
        cap = min(cap, settings.max_output_side)
    longest = max(width, height)
    if longest > cap:
        width, height = _scaled(width, cap, longest), _scaled(height, cap, longest)
    return oriented_size((width, height), orient)


def _scaled(value: int, numerator: int, denominator: int) -> int:
    """round(value * numerator / denominator) in integers, at least 1."""
    return max(1, (2 * value * numerator + denominator) // (2 * denominator))


def draft(im: Image.Image, target: tuple[int, int]) -> None:
    """Ask libjpeg to decode at the smallest DCT scale (1/8, 1/4, 3/8, 1/2) still >= the target.

    ``draft`` only ever picks a scale whose result covers the requested size, so the aspect
    ratio and the "never below target" rule hold; Lanczos does the rest. Pillow stops at 1/2;
    ``jpeg_scale`` adds 3/8 where libjpeg has it (12 MP -> 1280: 1500 px decoded, not 2000).
    """
    if target != im.size:
        original = im.size
        want = (
            max(1, min(im.width, int(target[0] * DRAFT_GAP))),
            max(1, min(im.height, int(target[1] * DRAFT_GAP))),
        )
        im.draft(None, want)
        jpeg_scale.narrow_draft(im, original, want)


def prepare_frame(
    im: Image.Image, target: tuple[int, int], orient: int, fmt: str, settings: Settings
) -> Image.Image:
    """Decode (once) and turn one frame into the metadata-free image the encoder gets."""
    icc_profile = im.info.get("icc_profile")
    im = to_working_mode(im)  # pixels are decoded here or by the first step that reads them
    im = resize(im, target)
    im = to_srgb(im, icc_profile)
    im = orient_image(im, orient)
    im = finish_alpha(im, fmt, settings.jpeg_background)
    return strip_metadata(im)


def resize(im: Image.Image, target: tuple[int, int]) -> Image.Image:
    """High-quality downscale to ``target``; a no-op (no copy) at the same size.

    A large resize is made as two horizontal bands on two threads (Pillow releases the GIL while
    resampling): the same filter over the same source rows as one ``Image.resize``; only the
    8-bit rounding of the intermediate pass may differ by a level here and there. Whether to
    split depends on the geometry alone, so the bytes are the same with or without a second
    core (PIPELINE_VERSION 2).
    """
    if im.size == target:
        return im
    cut = _band_cut(im, target)
    if cut is None:
        return im.resize(target, RESAMPLE, reducing_gap=REDUCING_GAP)
    premultiplied = {"LA": "La", "RGBA": "RGBa"}.get(im.mode)
    if premultiplied:  # as Image.resize does: resample premultiplied alpha, then undo it
        return _resize_bands(im.convert(premultiplied), target, cut).convert(im.mode)
    return _resize_bands(im, target, cut)


def _reduce_factors(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """Pillow's reducing_gap step (Image.resize): integer box reduction before resampling."""
    return (
        int(size[0] / target[0] / REDUCING_GAP) or 1,
        int(size[1] / target[1] / REDUCING_GAP) or 1,
    )


def _band_cut(im: Image.Image, target: tuple[int, int]) -> int | None:
    """The output row where the second band starts, or None to resize in one piece.

    Decided by the geometry alone (never by the number of cores), so a variant's bytes are the
    same on every machine.
    """
    if im.mode not in SPLIT_MODES or im.width * im.height < SPLIT_MIN_PIXELS or target[1] < 64:
        return None
    return target[1] // 2


def _resize_bands(im: Image.Image, target: tuple[int, int], cut: int) -> Image.Image:
    """``im.resize(target, RESAMPLE, reducing_gap=REDUCING_GAP)`` as two bands, one per thread.

    Each band resamples the box of source rows that maps onto its output rows (Pillow reads the
    filter's support beyond the box), after the same whole-image ``reducing_gap`` reduction.
    """
    im.load()
    width, height = im.size
    fx, fy = _reduce_factors(im.size, target)
    src = im.reduce((fx, fy)) if fx > 1 or fy > 1 else im
    box_w, box_h = width / fx, height / fy
    edge = cut * box_h / target[1]
    top, bottom = (0.0, 0.0, box_w, edge), (0.0, edge, box_w, box_h)

    def band(box: tuple[float, float, float, float], rows: int) -> Image.Image:
        return src.resize((target[0], rows), RESAMPLE, box=box)

    helper = _BAND_POOL.submit(band, bottom, target[1] - cut) if RESIZE_THREADS > 1 else None
    upper = band(top, cut)
    lower = helper.result() if helper is not None else band(bottom, target[1] - cut)
    out = Image.new(src.mode, target)
    out.paste(upper, (0, 0))
    out.paste(lower, (0, cut))
    return out


_BAND_POOL = LazyPool(1, "resize")


def orient_image(im: Image.Image, orient: int) -> Image.Image:
    """Apply the EXIF orientation (on the already small image, where it is cheap)."""
    method = TRANSPOSE_FOR_ORIENTATION.get(orient)
    return im if method is None else im.transpose(method)


def strip_metadata(im: Image.Image) -> Image.Image:
    """Forget EXIF, XMP, ICC and comments: output is plain sRGB and must not leak GPS data.

    Every image here belongs to this render (the opened source included, closed right after),
    so clearing ``info`` in place costs nothing and copies no pixels.
    """
    im.info = {}
    return im


def _render_animation(
    im: Image.Image,
    fmt: SourceFormat,
    frames: int,
    target: tuple[int, int],
    orient: int,
    options: Mapping[str, int],
    settings: Settings,
) -> Rendered:
    """Animated source -> animated WebP: every frame resized, timing and loop count kept."""
    loop = _loop_count(im, fmt)
    out: list[Image.Image] = []
    durations: list[int] = []
    for index in range(frames):
        im.seek(index)
        check_pixels(im.width, im.height, frames, settings)  # a GIF canvas can grow
        # A private RGBA copy of the composed frame: the source object changes on every seek.
        frame = im.convert("RGBA")
        durations.append(_duration(im.info.get("duration"), fmt))  # WebP sets it on load
        frame = prepare_frame(frame, target, orient, "webp", settings)
        out.append(frame if frame.mode == "RGBA" else frame.convert("RGBA"))
    data = encoders.encode_animated_webp(out, durations, loop, options)
    return Rendered(data, CONTENT_TYPES["webp"], out[0].width, out[0].height)


def _loop_count(im: Image.Image, fmt: SourceFormat) -> int:
    """WebP loop count (0 = forever). A GIF without a NETSCAPE loop block plays once."""
    loop = im.info.get("loop")
    if isinstance(loop, int) and loop >= 0:
        return loop
    return 1 if fmt.pil_format == "GIF" else 0


def _duration(value: object, fmt: SourceFormat) -> int:
    """Frame duration in ms; GIF's 0-10 ms frames are shown for 100 ms by browsers."""
    ms = int(value) if isinstance(value, int | float) and value >= 0 else 0
    if fmt.pil_format == "GIF" and ms < GIF_MIN_DURATION_MS:
        return GIF_DEFAULT_DURATION_MS
    return ms
