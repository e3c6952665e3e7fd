"""Opening sources safely: the shared first steps of probe and render.

Everything here works on Pillow's *lazy* open: the header is parsed, no pixel is decoded, so the
pixel and frame limits are enforced before any large allocation. Every Pillow failure is turned
into a domain error here, so callers never see Pillow's exceptions.
"""

from __future__ import annotations

import io
import mmap
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from struct import unpack_from
from typing import BinaryIO

from PIL import Image

from app.errors import DomainError, TooManyPixels, Unprocessable
from app.imaging.formats import SNIFF_BYTES, SourceFormat, sniff
from app.imaging.jpeg_structure import progressive_scans_over
from app.settings import Settings

Source = bytes | bytearray | memoryview | str | BinaryIO
# Progressive scans a JPEG may have (encoders write about 10; mozjpeg's searched scripts and
# hand-made ones stay far below). More is refused as a decoding bomb.
MAX_SCANS = 256

ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SWAPS_AXES = frozenset({5, 6, 7, 8})

# Pillow's own bomb check is a process-wide second line of defence; ours (settings.max_pixels,
# frames included) runs right after the lazy open and is the one that decides. Pillow's warning
# only ever fires for images we reject anyway, so it is noise; its error is mapped below.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def ensure_pillow_limit(max_pixels: int) -> None:
    """Raise (never lower, never disable) Pillow's global limit to at least ours.

    Otherwise an operator who allows more pixels than Pillow's default would see allowed images
    rejected by Pillow's error with a confusing message.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


@contextmanager
def pillow_errors() -> Iterator[None]:
    """Map any exception from Pillow (or libmagic, or the codecs) to a domain error."""
    try:
        yield
    except DomainError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels("the image has more pixels than the limit") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, ...
        # Pillow's messages can name server paths; say only what kind of failure it was.
        truncated = "truncated" in str(exc).lower()
        what = "is truncated" if truncated else "cannot be decoded (corrupt or unsupported data)"
        raise Unprocessable(f"the image {what}") from exc


def check_pixels(width: int, height: int, frames: int, settings: Settings) -> None:
    """Zero-sized -> Unprocessable; too many frames or pixels -> TooManyPixels."""
    if width <= 0 or height <= 0:
        raise Unprocessable(f"the image has no pixels ({width}x{height})")
    if frames > settings.max_frames:
        raise TooManyPixels(f"the image has more than the limit of {settings.max_frames} frames")
    total = width * height * frames
    if total > settings.max_pixels:
        extent = f"{width}x{height}" + (f"x{frames} frames" if frames > 1 else "")
        raise TooManyPixels(
            f"the image ({extent} = {total} pixels) is over the limit of "
            f"{settings.max_pixels} pixels"
        )


def webp_canvas_size(head: bytes) -> tuple[int, int] | None:
    """WebP canvas size from the RIFF header, or None if the header is not one we know.

    libwebp allocates the whole canvas when its decoder is created, which happens inside
    Image.open; reading the size first lets the limit act before that allocation.
    """
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        w, h = unpack_from("<HH", head, 26)
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


@contextmanager
def open_source(source: Source, settings: Settings) -> Iterator[tuple[Image.Image, SourceFormat]]:
    """Sniff, pre-check and lazily open a source (bytes, a file path, or an open binary file
    positioned at the start, which stays the caller's to close).

    Yields the still undecoded image and its allowed format; a file opened here is closed on
    exit. Only the decoder picked by the sniffed type may open it. Errors inside the ``with``
    body are not mapped here; callers wrap their own Pillow work in :func:`pillow_errors`.
    """
    ensure_pillow_limit(settings.max_pixels)
    fp: BinaryIO
    owned = True
    if isinstance(source, str):
        try:
            fp = open(source, "rb")  # closed in the finally below
        except OSError as exc:
            raise Unprocessable("the image cannot be read") from exc
    elif isinstance(source, bytes | bytearray | memoryview):
        fp = io.BytesIO(source)
    else:
        fp, owned = source, False
    try:
        head = fp.read(SNIFF_BYTES)
        fp.seek(0)
        fmt = sniff(head)
        if fmt.pil_format == "WEBP" and (size := webp_canvas_size(head)):
            check_pixels(size[0], size[1], 1, settings)
        with pillow_errors():
            im = Image.open(fp, formats=[fmt.pil_format])
        try:
            if fmt.pil_format == "JPEG" and im.info.get("progressive"):
                _refuse_scan_bombs(fp)
            yield im, fmt
        finally:
            im.close()
    finally:
        if owned:
            fp.close()


def _refuse_scan_bombs(fp: BinaryIO) -> None:
    """A progressive JPEG with more than MAX_SCANS scans is refused before any decode: each
    scan costs a pass over every block, whatever its size in bytes (``jpeg_structure``)."""
    with source_buffer(fp) as buf:
        if buf is not None and progressive_scans_over(buf, MAX_SCANS):
            raise Unprocessable(
                f"the image has more than {MAX_SCANS} progressive scans (a decoding bomb)"
            )


@contextmanager
def source_buffer(fp: BinaryIO) -> Iterator[memoryview | mmap.mmap | None]:
    """The whole of a source without reading it into memory: a BytesIO's own bytes, or a
    read-only mapping of a file; None where there is neither (an empty file, a pipe)."""
    if isinstance(fp, io.BytesIO):
        with fp.getbuffer() as view:
            yield view
        return
    try:
        fileno = fp.fileno()
        mapped = mmap.mmap(fileno, 0, access=mmap.ACCESS_READ) if os.fstat(fileno).st_size else None
    except (OSError, ValueError, AttributeError):
        mapped = None
    if mapped is None:
        yield None
        return
    with mapped:
        yield mapped


def orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8), 1 when absent or unreadable: bad EXIF never rejects a file."""
    try:
        value = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented_size(size: tuple[int, int], orient: int) -> tuple[int, int]:
    """The size as displayed after applying the EXIF orientation."""
    return (size[1], size[0]) if orient in SWAPS_AXES else size


def count_frames(im: Image.Image, fmt: SourceFormat, limit: int) -> int:
    """Frames in the source, counting at most ``limit + 1`` (enough to reject), decoding none.

    JPEG is always one frame (an MPO's extra pictures are ignored). GIF's ``n_frames`` walks the
    whole file, so a GIF of a million tiny frames would cost seconds; walk it ourselves with
    Pillow's parse-only seek and stop past the limit. WebP and APNG declare the count up front.
    """
    if fmt.pil_format == "JPEG" or not getattr(im, "is_animated", False):
        return 1
    seek_parse_only = getattr(im, "_seek", None)
    if fmt.pil_format == "GIF" and seek_parse_only is not None:
        count = 1
        try:
            while count <= limit:
                seek_parse_only(count, False)
                count += 1
        except EOFError:
            pass
        finally:
            im.seek(0)
        return count
    return int(getattr(im, "n_frames", 1))
