"""Test images made in code: no downloads, deterministic."""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image


def _noise_image(width: int, height: int, mode: str = "RGB", seed: int = 1) -> Image.Image:
    rnd = random.Random(seed)
    img = Image.new(mode, (width, height))
    # a few coloured blocks so content differs by seed but stays cheap to make
    for _ in range(12):
        x0, y0 = rnd.randrange(width), rnd.randrange(height)
        x1, y1 = (
            min(width, x0 + rnd.randrange(1, width)),
            min(height, y0 + rnd.randrange(1, height)),
        )
        colour = tuple(rnd.randrange(256) for _ in mode) if len(mode) > 1 else rnd.randrange(256)
        img.paste(colour, (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
    return img


def jpeg(width: int = 64, height: int = 48, seed: int = 1, **save: object) -> bytes:
    buf = io.BytesIO()
    _noise_image(width, height, seed=seed).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def png(width: int = 64, height: int = 48, seed: int = 1, mode: str = "RGBA") -> bytes:
    buf = io.BytesIO()
    _noise_image(width, height, mode=mode, seed=seed).save(buf, "PNG")
    return buf.getvalue()


def gif(width: int = 32, height: int = 32, frames: int = 1, seed: int = 1) -> bytes:
    imgs = [_noise_image(width, height, seed=seed + i).convert("P") for i in range(frames)]
    buf = io.BytesIO()
    imgs[0].save(buf, "GIF", save_all=frames > 1, append_images=imgs[1:], duration=50, loop=0)
    return buf.getvalue()


def webp(width: int = 40, height: int = 30, seed: int = 1) -> bytes:
    buf = io.BytesIO()
    _noise_image(width, height, seed=seed).save(buf, "WEBP", quality=80)
    return buf.getvalue()


def tiff() -> bytes:
    buf = io.BytesIO()
    _noise_image(8, 8).save(buf, "TIFF")
    return buf.getvalue()


def bmp() -> bytes:
    buf = io.BytesIO()
    _noise_image(8, 8).save(buf, "BMP")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims a huge size, with one tiny IDAT: a decompression-bomb header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG with its SOF0 dimensions rewritten."""
    data = bytearray(jpeg(16, 16))
    i = 2
    while i < len(data):
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(gif(8, 8))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
HTML = (
    b"<!DOCTYPE html><html><head><title>x</title></head>"
    b"<body><script>alert(1)</script></body></html>"
)
TEXT = b"hello, this is plain text and not an image at all\n"
