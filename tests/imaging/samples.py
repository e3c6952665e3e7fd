"""Test inputs built in code with Pillow (and a few by hand, byte by byte); nothing downloaded."""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image, ImageDraw


def encode(im: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def noisy_rgb(width: int, height: int, noise: float = 0.3, seed: int = 7) -> Image.Image:
    """A photo-like test card: gradients plus seeded noise (deterministic, unlike
    Image.effect_noise), so encoders have real work to do and every run sees the same bytes."""
    rng = random.Random(seed)
    channels = []
    for index in range(3):
        gradient = Image.linear_gradient("L") if index != 1 else Image.radial_gradient("L")
        if index == 2:
            gradient = gradient.transpose(Image.Transpose.ROTATE_90)
        grain = Image.frombytes("L", (width, height), rng.randbytes(width * height))
        channels.append(Image.blend(gradient.resize((width, height)), grain, noise))
    return Image.merge("RGB", channels)


def quadrants(width: int = 40, height: int = 20) -> Image.Image:
    """Red, green / blue, white quadrants: every rotation and flip looks different."""
    im = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(im)
    draw.rectangle([0, 0, width // 2 - 1, height // 2 - 1], fill=(255, 0, 0))
    draw.rectangle([width // 2, 0, width - 1, height // 2 - 1], fill=(0, 255, 0))
    draw.rectangle([0, height // 2, width // 2 - 1, height - 1], fill=(0, 0, 255))
    return im


def alpha_rgba(width: int = 120, height: int = 80) -> Image.Image:
    """Opaque red left half, fully transparent right half."""
    im = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    ImageDraw.Draw(im).rectangle([0, 0, width // 2 - 1, height - 1], fill=(255, 0, 0, 255))
    return im


def animated_gif(frames: int = 5, size: tuple[int, int] = (60, 40), duration: int = 70) -> bytes:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    images = [Image.new("RGB", size, colours[i % len(colours)]) for i in range(frames)]
    return encode(
        images[0], "GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
    )


def animated_webp(frames: int = 4, size: tuple[int, int] = (60, 40)) -> bytes:
    images = [Image.new("RGBA", size, (40 * i, 255 - 40 * i, 0, 255)) for i in range(frames)]
    return encode(images[0], "WEBP", save_all=True, append_images=images[1:], duration=80, loop=0)


# --- hand-built hostile headers ---------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with a tiny IDAT: a decompression bomb header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    signature = b"\x89PNG\r\n\x1a\n"
    return (
        signature + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF0 segment is patched to claim width x height."""
    data = bytearray(encode(Image.new("RGB", (16, 16), "red"), "JPEG"))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    """A real small GIF whose logical screen descriptor claims width x height."""
    data = bytearray(encode(Image.new("P", (16, 16)), "GIF"))
    struct.pack_into("<HH", data, 6, width, height)
    return bytes(data)


# --- ICC profiles built by hand (ICC v2 matrix/TRC display profiles) -------------------------
D50 = (0.9642, 1.0, 0.8249)
SRGB_D50 = ((0.4360747, 0.2225045, 0.0139322), (0.3850649, 0.7168786, 0.0971045),
            (0.1430804, 0.0606169, 0.7141733))  # fmt: skip
ADOBE_RGB_D50 = ((0.6097559, 0.3111145, 0.0194702), (0.2052401, 0.6256561, 0.0608929),
                 (0.1492240, 0.0632353, 0.7445805))  # fmt: skip
ADOBE_GAMMA = 563 / 256


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(xyz: tuple[float, float, float]) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in xyz)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def icc_profile(
    name: str, primaries: tuple[tuple[float, float, float], ...], gamma: float
) -> bytes:
    """An RGB matrix/TRC profile: primaries are the D50 XYZ of R, G and B; one gamma curve."""
    text = name.encode("ascii") + b"\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * (4 + 4 + 2 + 1 + 67)
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256))
    tags = [
        (b"desc", desc),
        (b"cprt", b"text\0\0\0\0" + b"public domain\0"),
        (b"wtpt", _xyz(D50)),
        (b"rXYZ", _xyz(primaries[0])),
        (b"gXYZ", _xyz(primaries[1])),
        (b"bXYZ", _xyz(primaries[2])),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += _pad(data)
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"\0\0\0\0"
        + b"\x02\x10\x00\x00"
        + b"mntrRGB XYZ "
        + b"\0" * 12
        + b"acsp"
        + b"\0" * 24
        + struct.pack(">I", 0)
        + b"".join(_s15(v) for v in D50)
        + b"\0" * 48
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def srgb_encode(linear: float) -> float:
    linear = min(1.0, max(0.0, linear))
    if linear <= 0.0031308:
        return 12.92 * linear
    return 1.055 * linear ** (1 / 2.4) - 0.055


def _invert(m: list[list[float]]) -> list[list[float]]:
    (a, b, c), (d, e, f), (g, h, i) = m
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    return [
        [(e * i - f * h) / det, (c * h - b * i) / det, (b * f - c * e) / det],
        [(f * g - d * i) / det, (a * i - c * g) / det, (c * d - a * f) / det],
        [(d * h - e * g) / det, (b * g - a * h) / det, (a * e - b * d) / det],
    ]


def expected_srgb(rgb: tuple[int, int, int], primaries, gamma: float) -> tuple[int, ...]:
    """By hand: device RGB under a matrix/gamma profile -> D50 XYZ -> sRGB (8-bit)."""
    linear = [(v / 255) ** gamma for v in rgb]
    xyz = [sum(primaries[k][row] * linear[k] for k in range(3)) for row in range(3)]
    to_srgb = _invert([[SRGB_D50[k][row] for k in range(3)] for row in range(3)])
    out = [sum(to_srgb[row][k] * xyz[k] for k in range(3)) for row in range(3)]
    return tuple(round(255 * srgb_encode(v)) for v in out)
