"""Probe an upload: type, dimensions, frames; limits first, then one full decode check.

Order matters: the type is sniffed (415), the header is parsed lazily and the pixel and frame
limits are enforced (422 ``too_many_pixels``) before a single pixel is decoded, so a 60000x60000
PNG costs microseconds and no memory; a progressive JPEG with more than ``MAX_SCANS`` scans
(a decoding bomb) is refused there too, on its markers. Only then is the file checked once,
by its markers or by a cheap decode, to reject truncated and corrupt files (422
``undecodable``) at upload time instead of at first view.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from app.imaging.decode import (
    check_pixels,
    count_frames,
    open_source,
    orientation,
    oriented_size,
    pillow_errors,
    source_buffer,
)
from app.imaging.formats import SourceFormat
from app.imaging.jpeg_structure import sequential_jpeg_headers, sequential_jpeg_is_sound
from app.settings import Settings


@dataclass(frozen=True)
class ProbeResult:
    """What an upload is. ``width``/``height`` are as displayed, after EXIF orientation, because
    that is the shape of every variant we serve (and what a page needs for its aspect ratio)."""

    mime_type: str
    width: int
    height: int
    frames: int
    animated: bool


def probe(path: str | bytes, settings: Settings, *, decode: bool = True) -> ProbeResult:
    """Sniff, check limits, verify that the image decodes; raise only domain errors.

    UnsupportedMediaType (415) for types outside the allowlist; TooManyPixels (422) for
    width*height*frames over ``settings.max_pixels`` or frames over ``settings.max_frames``;
    Unprocessable (422) for zero-sized, truncated or corrupt images. A GIF's logical screen
    counts as its size (Pillow decodes every frame into a canvas that large), so a 65535x65535
    screen around a tiny frame is ``too_many_pixels``, not ``undecodable``. A file whose pixel
    data is complete but whose trailing markers are missing (PNG after the last IDAT, sometimes a
    JPEG's final EOI) is accepted, as browsers show it whole. ``path`` may also be the bytes.

    ``decode=False`` skips only the full decode check (type and limits are still checked): for
    bytes known to have passed it already, such as a duplicate of stored content (same SHA-256,
    same bytes). On a 10 MB JPEG the decode check is most of an upload's time.
    """
    with open_source(path, settings) as (im, fmt), pillow_errors():
        width, height = im.size
        check_pixels(width, height, 1, settings)
        frames = count_frames(im, fmt, settings.max_frames)
        check_pixels(width, height, frames, settings)
        if decode:
            _decode_check(im, fmt, frames, settings)
        orient = orientation(im)
        shown_w, shown_h = oriented_size((width, height), orient)
        return ProbeResult(fmt.mime, shown_w, shown_h, frames, frames > 1)


def markers_pass_decode_check(path: str) -> bool:
    """The decode check's marker path alone, on a file already probed: True if it passed,
    False if unsure (then ``probe(path, decode=True)`` decides)."""
    try:
        with open(path, "rb") as fh, source_buffer(fh) as buf:
            return buf is not None and sequential_jpeg_is_sound(buf)
    except OSError:
        return False


def decode_check_reads_markers(path: str) -> bool:
    """Whether ``probe(path, decode=True)`` will most likely settle by reading the markers (a
    sequential JPEG whose headers are sound) rather than by decoding.

    It costs microseconds. A caller that would run the decode on another thread beside its
    own work can run such a check inline instead, where a thread would only compete with it
    for the GIL (the marker search holds it).
    """
    try:
        with open(path, "rb") as fh, source_buffer(fh) as buf:
            return buf is not None and sequential_jpeg_headers(buf)
    except OSError:
        return False


def _decode_check(im: Image.Image, fmt: SourceFormat, frames: int, settings: Settings) -> None:
    """Decode everything once, at the least cost that still reads every byte of pixel data.

    JPEG: draft mode decodes at 1/8 scale, which still entropy-decodes every scan of every
    component but reduces the IDCT to the DC coefficient and upsamples and converts 1/64 of the
    pixels: about half the time of a full decode (115 vs 258 ms on a 24 MP photo) and 1/64 of
    the memory, with the same verdict. tests/imaging/test_decode_check.py holds it to that:
    truncated and corrupted files of every JPEG flavour are accepted or refused exactly as a
    full decode does. (libjpeg conceals most damage inside entropy-coded data, in both modes
    alike; what it reports as an error, and every truncation, is refused.) The draft keeps the
    colour mode: a greyscale draft skipped the chroma upsampler, and with it libjpeg's refusal
    of fractional subsampling, which the variant pipeline's decode then met (no faster either:
    80 vs 82 ms for the 10 MB benchmark JPEG).

    Before that, a sequential JPEG whose every marker is sound (``jpeg_structure``) has its
    verdict known without decoding: libjpeg refuses such a file only for its markers. That
    reads the file once at memory speed (about 4 ms for 10 MB, against 65 ms for the draft
    decode); anything it is unsure of is decoded as above.

    Other formats: load the first frame, then seek and load every further frame (a GIF's canvas
    may grow as frames are read, so the limit is checked again after each one).
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False, so Pillow raises on truncated data
    instead of padding it.
    """
    if fmt.pil_format == "JPEG":
        if _markers_known_sound(im):
            return
        w, h = im.size
        im.draft(None, (max(1, w // 8), max(1, h // 8)))
        im.load()
        return
    im.load()
    for index in range(1, frames):
        im.seek(index)
        check_pixels(im.width, im.height, frames, settings)
        im.load()
    if frames > 1:
        im.seek(0)


def _markers_known_sound(im: Image.Image) -> bool:
    """Run the marker check on the file Pillow has open (mapped, not read into memory)."""
    fp = getattr(im, "fp", None)
    if fp is None:
        return False
    with source_buffer(fp) as buf:
        return buf is not None and sequential_jpeg_is_sound(buf)
