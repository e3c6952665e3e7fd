"""The mutation corpus: valid JPEG, PNG, GIF and WebP files, then broken on purpose.

Bytes flipped, chunks removed, lengths and dimensions rewritten (zero, "negative" as in a signed
32-bit read, huge: decompression bombs), huge frame counts, huge ICC and EXIF blocks. Every case
is built in code from a fixed seed, so a failure names a case that can be rebuilt exactly. What
each case must get: 201 or a 4xx with a JSON error, quickly and within a memory bound.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from PIL import Image

from tests import images


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes


# --- valid sources ------------------------------------------------------------------------------
def _save(im: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def _frames(count: int, size: tuple[int, int] = (24, 16)) -> list[Image.Image]:
    colours = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (250, 250, 0)]
    return [Image.new("RGB", size, colours[i % len(colours)]) for i in range(count)]


def bases() -> dict[str, bytes]:
    """One small valid file per source flavour the pipeline has a branch for."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the probe swaps width and height
    frames = _frames(3)
    return {
        "jpeg": images.jpeg(64, 48, seed=3),
        "jpeg-progressive": images.jpeg(64, 48, seed=4, progressive=True),
        "jpeg-exif": images.jpeg(40, 30, seed=5, exif=exif.tobytes()),
        "png-rgba": images.png(48, 32, seed=6),
        "png-palette": _save(Image.new("P", (20, 20), 3), "PNG"),
        "png-16bit": _save(Image.new("I;16", (16, 16), 1000), "PNG"),
        "apng": _save(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50),
        "gif": images.gif(16, 16, seed=7),
        "gif-animated": images.gif(16, 16, frames=3, seed=8),
        "webp": images.webp(32, 24, seed=9),
        "webp-lossless": _save(Image.new("RGBA", (20, 12), (1, 2, 3, 4)), "WEBP", lossless=True),
        "webp-animated": _save(
            frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=40
        ),
    }


# --- generic byte mutations ---------------------------------------------------------------------
def flip(data: bytes, seed: int, count: int = 8, start: int = 0) -> bytes:
    rnd = random.Random(seed)
    out = bytearray(data)
    for _ in range(count):
        i = rnd.randrange(min(start, len(out) - 1), len(out))
        out[i] ^= rnd.randrange(1, 256)
    return bytes(out)


def generic(name: str, data: bytes) -> Iterator[Case]:
    for seed in range(3):
        yield Case(f"{name}/flip-header-{seed}", flip(data, seed, count=2, start=0))
        yield Case(f"{name}/flip-body-{seed}", flip(data, 100 + seed, count=12, start=32))
    for fraction in (4, 2):
        yield Case(f"{name}/truncated-1/{fraction}", data[: len(data) // fraction])
    yield Case(f"{name}/truncated-last-16", data[:-16])
    rnd = random.Random(zlib.crc32(name.encode()))
    at = rnd.randrange(16, max(17, len(data) - 64))
    yield Case(f"{name}/zeroed-64", data[:at] + bytes(64) + data[at + 64 :])
    yield Case(f"{name}/slice-repeated", data[:at] + data[at : at + 200] * 20 + data[at:])
    yield Case(f"{name}/appended-garbage", data + random.Random(1).randbytes(4096))


# --- PNG ----------------------------------------------------------------------------------------
PNG_SIG = b"\x89PNG\r\n\x1a\n"


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data.startswith(PNG_SIG)
    chunks, i = [], len(PNG_SIG)
    while i + 8 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        kind = data[i + 4 : i + 8]
        chunks.append((kind, data[i + 8 : i + 8 + length]))
        i += 12 + length
    return chunks


def png_chunk(kind: bytes, payload: bytes, *, length: int | None = None, crc: bool = True) -> bytes:
    check = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return (
        struct.pack(">I", len(payload) if length is None else length)
        + kind
        + payload
        + struct.pack(">I", check if crc else check ^ 1)
    )


def png_build(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return PNG_SIG + b"".join(png_chunk(k, p) for k, p in chunks)


def _with_ihdr(chunks: list[tuple[bytes, bytes]], **fields: int) -> list[tuple[bytes, bytes]]:
    out = []
    for kind, payload in chunks:
        if kind == b"IHDR":
            w, h, depth, colour, comp, filt, inter = struct.unpack(">IIBBBBB", payload)
            w, h = fields.get("width", w), fields.get("height", h)
            depth, colour = fields.get("depth", depth), fields.get("colour", colour)
            payload = struct.pack(">IIBBBBB", w, h, depth, colour, comp, filt, inter)
        out.append((kind, payload))
    return out


def _insert_after_ihdr(chunks: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]):  # type: ignore[no-untyped-def]
    return chunks[:1] + extra + chunks[1:]


def png_cases(name: str, data: bytes) -> Iterator[Case]:
    chunks = png_chunks(data)
    kinds = {k for k, _ in chunks}
    for kind in (b"IHDR", b"PLTE", b"IDAT", b"IEND", b"acTL", b"fcTL"):
        if kind in kinds:
            yield Case(
                f"{name}/without-{kind.decode()}", png_build([c for c in chunks if c[0] != kind])
            )
    dims = {
        "0x0": (0, 0),
        "0x10": (0, 10),
        "10x0": (10, 0),
        "negative-width": (0x80000000, 16),
        "max-uint32": (0xFFFFFFFF, 0xFFFFFFFF),
        "bomb-60000x60000": (60000, 60000),
        "wide-50000001x1": (50_000_001, 1),
        "under-limit-7000x7000": (7000, 7000),  # allowed size, tiny data: truncated
    }
    for label, (w, h) in dims.items():
        yield Case(f"{name}/ihdr-{label}", png_build(_with_ihdr(chunks, width=w, height=h)))
    yield Case(f"{name}/ihdr-depth-7", png_build(_with_ihdr(chunks, depth=7)))
    yield Case(f"{name}/ihdr-colour-5", png_build(_with_ihdr(chunks, colour=5)))
    body = b"".join(png_chunk(k, p, crc=k != b"IHDR") for k, p in chunks)
    yield Case(f"{name}/ihdr-bad-crc", PNG_SIG + body)
    for label, length in (("0", 0), ("2^31-1", 0x7FFFFFFF), ("2^32-1", 0xFFFFFFFF)):
        parts = []
        for k, p in chunks:
            parts.append(png_chunk(k, p, length=length if k == b"IDAT" else None))
        yield Case(f"{name}/idat-length-{label}", PNG_SIG + b"".join(parts))
    if name == "png-rgba":
        yield from _png_metadata_bombs(name, chunks)


def _png_metadata_bombs(name: str, chunks: list[tuple[bytes, bytes]]) -> Iterator[Case]:
    zeros = zlib.compress(bytes(64 * 1024 * 1024), 9)  # 64 MiB inflating from ~64 KiB
    yield Case(
        f"{name}/iccp-zlib-bomb",
        png_build(_insert_after_ihdr(chunks, [(b"iCCP", b"icc\x00\x00" + zeros)])),
    )
    garbage = random.Random(2).randbytes(2 * 1024 * 1024)
    yield Case(
        f"{name}/iccp-2mib-garbage",
        png_build(_insert_after_ihdr(chunks, [(b"iCCP", b"icc\x00\x00" + zlib.compress(garbage))])),
    )
    yield Case(
        f"{name}/exif-4mib",
        png_build(_insert_after_ihdr(chunks, [(b"eXIf", b"MM\x00*" + garbage * 2)])),
    )
    yield Case(
        f"{name}/ztxt-bomb",
        png_build(_insert_after_ihdr(chunks, [(b"zTXt", b"c\x00\x00" + zeros)])),
    )
    many = [(b"tEXt", b"k\x00" + str(i).encode()) for i in range(20000)]
    yield Case(f"{name}/20000-text-chunks", png_build(_insert_after_ihdr(chunks, many)))
    actl = [(b"acTL", struct.pack(">II", 0x7FFFFFFF, 0))]
    yield Case(f"{name}/actl-2^31-frames", png_build(_insert_after_ihdr(chunks, actl)))


# --- JPEG ---------------------------------------------------------------------------------------
STANDALONE = {0x01, *range(0xD0, 0xD9)}
SOF_MARKERS = {0xC0, 0xC1, 0xC2}


def jpeg_segments(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """(marker, payload) up to and including SOS, then the entropy-coded tail."""
    assert data[:2] == b"\xff\xd8"
    segments, i = [], 2
    while i < len(data):
        assert data[i] == 0xFF, i
        marker = data[i + 1]
        if marker in STANDALONE:
            segments.append((marker, b""))
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        segments.append((marker, data[i + 4 : i + 2 + length]))
        i += 2 + length
        if marker == 0xDA:
            return segments, data[i:]
    return segments, b""


def jpeg_build(segments: list[tuple[int, bytes]], tail: bytes) -> bytes:
    out = [b"\xff\xd8"]
    for marker, payload in segments:
        if marker in STANDALONE:
            out.append(bytes([0xFF, marker]))
        else:
            out.append(bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload)
    return b"".join(out) + tail


def _sof(segments, fn: Callable[[bytes], bytes]):  # type: ignore[no-untyped-def]
    return [(m, fn(p) if m in SOF_MARKERS else p) for m, p in segments]


def _sof_size(payload: bytes, width: int, height: int) -> bytes:
    return payload[:1] + struct.pack(">HH", height, width) + payload[5:]


def _exif_ifd(count: int, entries: list[tuple[int, int, int, int]]) -> bytes:
    ifd = struct.pack(">H", count) + b"".join(struct.pack(">HHII", *e) for e in entries)
    return b"Exif\x00\x00" + b"MM\x00\x2a\x00\x00\x00\x08" + ifd + b"\x00\x00\x00\x00"


def jpeg_cases(name: str, data: bytes) -> Iterator[Case]:
    segments, tail = jpeg_segments(data)
    for marker, label in (
        (0xDB, "DQT"),
        (0xC4, "DHT"),
        (0xDA, "SOS"),
        (0xC0, "SOF0"),
        (0xC2, "SOF2"),
    ):
        if any(m == marker for m, _ in segments):
            kept = [s for s in segments if s[0] != marker]
            yield Case(f"{name}/without-{label}", jpeg_build(kept, tail))
    for label, (w, h) in {
        "0x0": (0, 0),
        "0-height-dnl": (64, 0),
        "65535x65535": (65535, 65535),
        "under-limit-65500x700": (65500, 700),
    }.items():
        yield Case(
            f"{name}/sof-{label}",
            jpeg_build(_sof(segments, lambda p, w=w, h=h: _sof_size(p, w, h)), tail),
        )
    yield Case(
        f"{name}/sof-0-components", jpeg_build(_sof(segments, lambda p: p[:5] + b"\x00"), tail)
    )
    yield Case(f"{name}/sof-12-bit", jpeg_build(_sof(segments, lambda p: b"\x0c" + p[1:]), tail))
    # raw length rewrites of the first segment after SOI (APP0 or DQT)
    for label, length in (("0", 0), ("1", 1), ("ffff", 0xFFFF)):
        yield Case(
            f"{name}/first-segment-length-{label}", data[:4] + struct.pack(">H", length) + data[6:]
        )
    if name != "jpeg":
        return
    exif = _exif_ifd(
        65535, [(0x0112, 3, 1, 9 << 16), (0x8769, 4, 1, 0xFFFFFFF0), (0x010F, 2, 0xFFFFFFFF, 8)]
    )
    yield Case(
        f"{name}/exif-65535-entries", jpeg_build([segments[0], (0xE1, exif), *segments[1:]], tail)
    )
    big_exif = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + random.Random(3).randbytes(65000)
    many = [(0xE1, big_exif)] * 300  # ~19.5 MiB of EXIF segments
    yield Case(f"{name}/exif-300-segments", jpeg_build([segments[0], *many, *segments[1:]], tail))
    icc = [
        (0xE2, b"ICC_PROFILE\x00" + bytes([i + 1, 250]) + random.Random(i).randbytes(65000))
        for i in range(250)
    ]
    yield Case(f"{name}/icc-250-chunks-16mib", jpeg_build([segments[0], *icc, *segments[1:]], tail))
    bad_icc = [(0xE2, b"ICC_PROFILE\x00" + bytes([0, 0]) + b"x" * 100)] * 3
    yield Case(f"{name}/icc-bad-sequence", jpeg_build([segments[0], *bad_icc, *segments[1:]], tail))


# --- GIF ----------------------------------------------------------------------------------------
GIF_1X1_FRAME = (
    b"!\xf9\x04\x00\x02\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00"
)


def gif_of_frames(frames: int, screen: tuple[int, int] = (1, 1)) -> bytes:
    """A hand-built animated GIF of ``frames`` 1x1 frames (about 22 bytes each)."""
    head = b"GIF89a" + struct.pack("<HH", *screen) + b"\x80\x00\x00" + b"\xff\xff\xff\x00\x00\x00"
    loop = b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    return head + loop + GIF_1X1_FRAME * frames + b";"


def gif_cases(name: str, data: bytes) -> Iterator[Case]:
    for label, (w, h) in {
        "0x0": (0, 0),
        "65535x65535": (65535, 65535),
        "7000x7000": (7000, 7000),
    }.items():
        yield Case(f"{name}/screen-{label}", data[:6] + struct.pack("<HH", w, h) + data[10:])
    at = data.find(b",")  # first image descriptor
    if at > 0:
        yield Case(
            f"{name}/frame-65535x65535",
            data[: at + 5] + struct.pack("<HH", 65535, 65535) + data[at + 9 :],
        )
        for size in (0, 12, 255):
            yield Case(
                f"{name}/lzw-code-size-{size}", data[: at + 10] + bytes([size]) + data[at + 11 :]
            )
    yield Case(f"{name}/without-trailer", data.rstrip(b";"))
    if name == "gif":
        yield Case("gif/2000-frames", gif_of_frames(2000))
        yield Case("gif/400-frames", gif_of_frames(400))
        yield Case("gif/100000-frames", gif_of_frames(100_000))  # 2.2 MB, counting must stop early
        comment = b"!\xfe" + (b"\xff" + b"c" * 255) * 8000 + b"\x00"  # 2 MB comment extension
        yield Case("gif/2mib-comment", data[:-1] + comment + b";")


# --- WebP ---------------------------------------------------------------------------------------
def webp_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    chunks, i = [], 12
    while i + 8 <= len(data):
        kind = data[i : i + 4]
        (size,) = struct.unpack("<I", data[i + 4 : i + 8])
        chunks.append((kind, data[i + 8 : i + 8 + size]))
        i += 8 + size + (size & 1)
    return chunks


def webp_build(chunks: list[tuple[bytes, bytes]], riff_size: int | None = None) -> bytes:
    body = b"".join(
        k + struct.pack("<I", len(p)) + p + (b"\x00" if len(p) & 1 else b"") for k, p in chunks
    )
    size = len(body) + 4 if riff_size is None else riff_size
    return b"RIFF" + struct.pack("<I", size) + b"WEBP" + body


def _vp8x(flags: int, width: int, height: int) -> bytes:
    return (
        bytes([flags, 0, 0, 0])
        + (width - 1).to_bytes(3, "little")
        + (height - 1).to_bytes(3, "little")
    )


def webp_cases(name: str, data: bytes) -> Iterator[Case]:
    chunks = webp_chunks(data)
    for label, size in (("0", 0), ("ffffffff", 0xFFFFFFFF), ("4", 4)):
        yield Case(f"{name}/riff-size-{label}", webp_build(chunks, riff_size=size))
    image = [c for c in chunks if c[0] in (b"VP8 ", b"VP8L")]
    if image:
        kind, payload = image[0]
        for label, (w, h) in {
            "16384x16384": (16384, 16384),
            "7000x7000": (7000, 7000),
            "1x1": (1, 1),
        }.items():
            yield Case(
                f"{name}/vp8x-canvas-{label}",
                webp_build([(b"VP8X", _vp8x(0, w, h)), (kind, payload)]),
            )
        if kind == b"VP8 " and len(payload) > 10:
            for label, dims in (("0x0", (0, 0)), ("16383x16383", (16383, 16383))):
                patched = payload[:6] + struct.pack("<HH", *dims) + payload[10:]
                yield Case(f"{name}/vp8-{label}", webp_build([(kind, patched)]))
        if kind == b"VP8L" and len(payload) > 5:
            bits = 0x3FFF | (0x3FFF << 14)
            patched = (
                payload[:1]
                + (bits | (int.from_bytes(payload[1:5], "little") & ~0xFFFFFFF)).to_bytes(
                    4, "little"
                )
                + payload[5:]
            )
            yield Case(f"{name}/vp8l-16384x16384", webp_build([(kind, patched)]))
        if name == "webp":
            blob = random.Random(5).randbytes(4 * 1024 * 1024)
            w = int.from_bytes(_vp8x(0, 32, 24)[4:7], "little") + 1
            h = int.from_bytes(_vp8x(0, 32, 24)[7:10], "little") + 1
            flags = 0x20 | 0x08  # ICC and EXIF present
            yield Case(
                f"{name}/iccp-and-exif-4mib",
                webp_build(
                    [
                        (b"VP8X", _vp8x(flags, w, h)),
                        (b"ICCP", blob),
                        (kind, payload),
                        (b"EXIF", blob),
                    ]
                ),
            )
    frames = [c for c in chunks if c[0] == b"ANMF"]
    if frames:
        head = [c for c in chunks if c[0] in (b"VP8X", b"ANIM")]
        yield Case(f"{name}/1000-frames", webp_build(head + frames[:1] * 1000))
        big = frames[0][1][:6] + (16383).to_bytes(3, "little") * 2 + frames[0][1][12:]
        yield Case(f"{name}/frame-16384x16384", webp_build(head + [(b"ANMF", big)] + frames[1:]))
        yield Case(f"{name}/without-frames", webp_build(head))


# --- the corpus ---------------------------------------------------------------------------------
SPECIFIC = {
    "png": png_cases,
    "apng": png_cases,
    "jpeg": jpeg_cases,
    "gif": gif_cases,
    "webp": webp_cases,
}


def corpus() -> list[Case]:
    """Every case, deterministic, named ``<base>/<mutation>``."""
    cases: list[Case] = []
    for name, data in bases().items():
        cases.append(Case(f"{name}/valid", data))
        cases.extend(generic(name, data))
        family = name.split("-")[0]
        cases.extend(SPECIFIC[family](name, data))
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases
