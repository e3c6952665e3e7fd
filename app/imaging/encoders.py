"""Encoders: one prepared (sRGB, upright, right-sized, metadata-free) image in, bytes out.

Options come from the preset named in the URL (``settings.presets[quality][format]``). Every
call passes its options explicitly, so output depends only on the pixels and the preset, never
on Pillow's defaults drifting from ``im.info`` (AVIF, for one, copies ``im.info["icc_profile"]``
unless told otherwise).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

from PIL import Image, features

# Encoder limits on the longest side; the planner shrinks anything larger to fit.
# libjpeg: JPEG_MAX_DIMENSION 65500; WebP: 14-bit sizes; AVIF: libavif's default decode limit.
MAX_SIDE: dict[str, int] = {"jpeg": 65500, "webp": 16383, "avif": 16384}

# AVIF (aom) output can depend on the thread count; a fixed count keeps bytes identical across
# machines with different core counts, so ETags and stored variants agree.
AVIF_THREADS = 2


def avif_available() -> bool:
    """Whether this Pillow has its built-in AVIF codec (Pillow >= 11.2 wheels do)."""
    return bool(features.check("avif"))


def encode(im: Image.Image, fmt: str, options: Mapping[str, int]) -> bytes:
    """Encode one image as ``fmt`` ('jpeg', 'webp' or 'avif') with the preset's options."""
    buf = io.BytesIO()
    quality = int(options["quality"])
    if fmt == "jpeg":
        # optimize: Huffman tables fitted to the image (smaller, same pixels, cheap). progressive
        # (a preset option): about 2% smaller and renders early on slow links, but encodes in
        # about 2.5x the time. Subsampling stays libjpeg's 4:2:0 default.
        progressive = bool(options.get("progressive", 1))
        im.save(buf, "JPEG", quality=quality, progressive=progressive, optimize=True)
    elif fmt == "webp":
        im.save(buf, "WEBP", quality=quality, method=int(options.get("method", 2)), exif=b"")
    elif fmt == "avif":
        im.save(
            buf,
            "AVIF",
            quality=quality,
            speed=int(options.get("speed", 9)),
            max_threads=AVIF_THREADS,
            icc_profile=b"",
            exif=b"",
        )
    else:  # parse_variant makes this unreachable; keep it loud if someone skips it
        raise ValueError(f"unknown output format {fmt!r}")
    return buf.getvalue()


def encode_animated_webp(
    frames: Sequence[Image.Image],
    durations: Sequence[int],
    loop: int,
    options: Mapping[str, int],
) -> bytes:
    """Encode frames (same size, RGBA) as an animated WebP keeping timing and loop count."""
    buf = io.BytesIO()
    frames[0].save(
        buf,
        "WEBP",
        save_all=True,
        append_images=list(frames[1:]),
        duration=list(durations),
        loop=loop,
        quality=int(options["quality"]),
        method=int(options.get("method", 2)),
        background=(0, 0, 0, 0),
        exif=b"",
    )
    return buf.getvalue()
