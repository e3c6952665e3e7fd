"""The marker check's rules, one by one: each is a libjpeg refusal, so each case here is a file
libjpeg refuses (the full decode says so first), and the marker check must be unsure of it, so
that the upload check decodes it and answers 422. Cases libjpeg accepts but the marker check
does not model (fill bytes, odd scan parameters) must be unsure too, and then be accepted.
"""

from __future__ import annotations

import copy
import mmap
from collections.abc import Callable

import pytest
from PIL import Image, ImageFile

import app.imaging.jpeg_structure as structure
from app.errors import Unprocessable
from app.imaging import probe
from app.imaging.decode import MAX_SCANS
from app.imaging.jpeg_structure import (
    MAX_SEGMENTS,
    sequential_jpeg_headers,
    sequential_jpeg_is_sound,
)
from app.imaging.pipeline import render
from app.settings import Settings, VariantSpec

from .samples import encode, noisy_rgb
from .test_decode_check import full_decode_accepts

BASE = encode(noisy_rgb(64, 48, noise=0.4), "JPEG", quality=90)
SOF0, DHT, DQT, SOS, DRI = 0xC0, 0xC4, 0xDB, 0xDA, 0xDD

Segments = list[tuple[int, bytearray]]


def split(data: bytes) -> tuple[Segments, bytes]:
    """The segments up to and including the first SOS, and what follows (scan data, EOI)."""
    segments: Segments = []
    pos = 2
    while True:
        code, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        segments.append((code, bytearray(data[pos + 4 : pos + 2 + length])))
        pos += 2 + length
        if code == SOS:
            return segments, data[pos:]


def join(segments: Segments, rest: bytes) -> bytes:
    out = bytearray(b"\xff\xd8")
    for code, body in segments:
        out += bytes([0xFF, code]) + (len(body) + 2).to_bytes(2, "big") + body
    return bytes(out + rest)


def edited(edit: Callable[[Segments], bytes | None]) -> bytes:
    segments, rest = split(BASE)
    segments = copy.deepcopy(segments)
    return join(segments, edit(segments) or rest)


def first(segments: Segments, code: int) -> bytearray:
    return next(body for c, body in segments if c == code)


def huffman_tables(body: bytearray) -> list[bytearray]:
    tables, at = [], 0
    while at < len(body):
        size = 17 + sum(body[at + 1 : at + 17])
        tables.append(body[at : at + size])
        at += size
    return tables


def replace_dc0(segments: Segments, table: bytes) -> None:
    """Swap DC table 0 (wherever it is defined) for ``table``."""
    for index, (code, body) in enumerate(segments):
        if code == DHT and any(t[0] == 0x00 for t in huffman_tables(body)):
            others = [t for t in huffman_tables(body) if t[0] != 0x00]
            segments[index] = (DHT, bytearray(table) + b"".join(others))
            return
    raise AssertionError("no DC table 0")


def dc_symbols(segments: Segments, symbol: int) -> None:
    for code, body in segments:
        if code == DHT and body[0] == 0x00:
            body[17] = symbol
            return
    raise AssertionError("no DC table 0 first in a DHT")


def second_scan(segments: Segments) -> bytes:
    """Another SOS after a scan that held every component: JERR_EOI_EXPECTED."""
    _, rest = split(BASE)
    header = bytes([0xFF, SOS]) + (len(first(segments, SOS)) + 2).to_bytes(2, "big")
    return rest[:-2] + header + bytes(first(segments, SOS)) + rest[-60:]


def set_bytes(code: int, values: dict[int, int]) -> Callable[[Segments], None]:
    def edit(segments: Segments) -> None:
        for at, value in values.items():
            first(segments, code)[at] = value

    return edit


def set_byte(code: int, at: int, value: int) -> Callable[[Segments], None]:
    return set_bytes(code, {at: value})


def inserted(at_end: int, data: bytes) -> bytes:
    """``data`` inserted ``at_end`` bytes before the end of BASE (inside the scan data)."""
    return BASE[:-at_end] + data + BASE[-at_end:]


# name -> file libjpeg refuses. The rule each one breaks is in its name.
REFUSED = {
    "huffman-codes-overflow": edited(
        lambda s: replace_dc0(s, bytes([0x00, 3] + [0] * 15 + [0, 1, 2]))
    ),
    "huffman-all-ones-code": edited(lambda s: replace_dc0(s, bytes([0x00, 2] + [0] * 15 + [0, 1]))),
    "dc-symbol-over-15": edited(lambda s: dc_symbols(s, 16)),
    "undefined-quant-table": edited(set_byte(SOF0, 8, 3)),
    "undefined-huffman-table": edited(set_byte(SOS, 2, 0x22)),
    "fractional-sampling": edited(set_bytes(SOF0, {7: 0x31, 10: 0x21})),  # luma 3, Cb 2 wide
    "mcu-over-10-blocks": edited(set_byte(SOF0, 7, 0x44)),
    "mcu-over-10-blocks-3x3": edited(set_byte(SOF0, 7, 0x33)),
    "quant-table-index-4": edited(set_byte(DQT, 0, 0x04)),
    "two-sof": edited(lambda s: s.insert(3, copy.deepcopy(next(x for x in s if x[0] == SOF0)))),
    "scan-after-complete-scan": edited(second_scan),
    "dri-length": edited(lambda s: s.insert(1, (DRI, bytearray(b"\x00\x01\x00")))),
    "no-eoi": BASE[:-2],
    "reserved-marker-in-scan": inserted(40, b"\xff\x02"),
    "sof-in-scan": inserted(40, b"\xff\xc0\x00\x02"),
    "bad-dht-in-scan": inserted(40, b"\xff\xc4\x00\x05\x00\x00\x00"),
    "truncated-mid-segment": BASE[:30],
}

# name -> file libjpeg accepts (with warnings) that the marker check does not vouch for.
UNMODELLED = {
    "sequential-scan-ss-1": edited(set_byte(SOS, 7, 1)),
    "zero-quant-value": edited(set_byte(DQT, 1, 0)),
    "app-length-1": BASE[:2] + b"\xff\xe0\x00\x01" + BASE[2:],
    "fill-byte-before-marker": BASE[:2] + b"\xff" + BASE[2:],
    "garbage-before-marker": BASE[:20] + b"\x00" + BASE[20:],  # after the APP0 segment
    "sampling-factor-3": edited(set_byte(SOF0, 7, 0x31)),
    "rst-without-restart-interval": inserted(40, b"\xff\xd0"),
    "progressive": encode(noisy_rgb(64, 48, noise=0.4), "JPEG", quality=90, progressive=True),
    "too-many-segments": BASE[:2] + b"\xff\xfe\x00\x02" * (MAX_SEGMENTS + 1) + BASE[2:],
}

# name -> file both accept: the check vouches for them.
SOUND = {
    "base": BASE,
    "eoi-early": BASE[: len(BASE) // 2] + b"\xff\xd9",  # libjpeg fills the rest with grey
    "bytes-after-eoi": BASE + b"trailer \xff\x00\xff\xd9 junk",
    "comment-between-tables": edited(lambda s: s.insert(2, (0xFE, bytearray(b"hello")))),
    "restart-intervals": encode(noisy_rgb(64, 48), "JPEG", quality=90, restart_marker_blocks=1),
    "16-bit-quant-table": edited(
        lambda s: s.__setitem__(
            1, (DQT, bytearray([0x10]) + b"".join(bytes([0, v]) for v in first(s, DQT)[1:65]))
        )
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_broken_rule_is_refused_by_libjpeg_and_not_vouched_for(
    settings: Settings, name: str
) -> None:
    data = REFUSED[name]
    assert not full_decode_accepts(data), f"{name}: libjpeg accepts it; the case is wrong"
    assert sequential_jpeg_is_sound(data) is False
    with pytest.raises(Unprocessable):
        probe(data, settings)


@pytest.mark.parametrize("name", sorted(UNMODELLED))
def test_what_is_not_modelled_goes_to_the_decoder(settings: Settings, name: str) -> None:
    data = UNMODELLED[name]
    assert full_decode_accepts(data), f"{name}: libjpeg refuses it; the case is wrong"
    assert sequential_jpeg_is_sound(data) is False
    assert probe(data, settings).width == 64


@pytest.mark.parametrize("name", sorted(SOUND))
def test_sound_files_are_vouched_for(settings: Settings, name: str) -> None:
    data = SOUND[name]
    assert full_decode_accepts(data)
    assert sequential_jpeg_is_sound(data) is True
    assert sequential_jpeg_headers(data) is True
    assert probe(data, settings).width == 64


def test_headers_alone_do_not_vouch_for_the_scan() -> None:
    """The cheap pre-test looks at headers only: a truncated scan passes it, and only the
    full check finds the missing end."""
    assert sequential_jpeg_headers(BASE[:-200]) is True
    assert sequential_jpeg_is_sound(BASE[:-200]) is False
    assert sequential_jpeg_headers(UNMODELLED["progressive"]) is False


def test_it_reads_a_mapped_file_and_leaves_it_closable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "a.jpg"
    path.write_bytes(BASE)
    with open(path, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        assert sequential_jpeg_is_sound(mapped) is True
        mapped.close()  # BufferError if the check had left a view of it open


def test_not_a_jpeg_at_all() -> None:
    for data in (b"", b"\xff", b"\xff\xd8", b"\x89PNG\r\n\x1a\n" + bytes(100), bytes(1000)):
        assert sequential_jpeg_is_sound(data) is False


def test_another_jpeg_library_gets_no_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules are libjpeg-turbo's; with any other decoder the decode decides."""
    monkeypatch.setattr(structure, "DECODER_IS_LIBJPEG_TURBO", False)
    assert sequential_jpeg_is_sound(BASE) is False
    assert sequential_jpeg_headers(BASE) is False


def test_this_pillow_decodes_with_libjpeg_turbo() -> None:
    """Otherwise every test above would prove nothing about the fast path."""
    assert structure.DECODER_IS_LIBJPEG_TURBO


# --- progressive scan bombs -------------------------------------------------------------------
def progressive_with_scans(extra: int, between: bytes = b"") -> bytes:
    """A 2000x2000 progressive JPEG (10 scans) with its last scan repeated ``extra`` times:
    each repeat is a dozen bytes that make libjpeg walk all 62,500 blocks once more."""
    data = encode(Image.new("RGB", (2000, 2000), (128, 128, 128)), "JPEG", progressive=True)
    last = data.rindex(b"\xff\xda")
    assert data.endswith(b"\xff\xd9")
    return data[:-2] + (between + data[last:-2]) * extra + b"\xff\xd9"


def test_a_progressive_scan_bomb_is_refused_before_any_decode(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = progressive_with_scans(MAX_SCANS)  # 10 scans of its own, so over the limit
    normal = progressive_with_scans(0)
    assert len(bomb) - len(normal) < 4000  # 256 more scans in under 4 KB
    assert structure.progressive_scans_over(bomb, MAX_SCANS)
    assert not structure.progressive_scans_over(normal, MAX_SCANS)
    loads: list[object] = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: loads.append(im) or load(im))
    with pytest.raises(Unprocessable, match="progressive scans"):
        probe(bomb, settings)
    with pytest.raises(Unprocessable, match="progressive scans"):
        render(bomb, VariantSpec("webp", "low", 320), settings)
    assert loads == []  # refused on its markers alone
    assert probe(normal, settings).width == 2000


def test_the_scan_limit_is_exact_and_counts_scans_behind_garbage() -> None:
    """libjpeg skips garbage and fill bytes between segments and still decodes what follows,
    so the count does too; bytes inside a segment (an APP payload) are not markers."""
    at_limit = progressive_with_scans(MAX_SCANS - 10)
    assert not structure.progressive_scans_over(at_limit, MAX_SCANS)
    assert structure.progressive_scans_over(progressive_with_scans(MAX_SCANS - 9), MAX_SCANS)
    hidden = progressive_with_scans(MAX_SCANS - 9, between=b"junk\xff\xff")
    assert full_decode_accepts(hidden)  # libjpeg decodes those scans (with warnings)
    assert structure.progressive_scans_over(hidden, MAX_SCANS)
    app_payload = b"\xff\xe1" + (2 + 3000).to_bytes(2, "big") + b"\xff\xda\x00\x08" * 750
    padded = at_limit[:2] + app_payload + at_limit[2:]
    assert not structure.progressive_scans_over(padded, MAX_SCANS)
