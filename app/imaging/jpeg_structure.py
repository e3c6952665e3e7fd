"""Reading a sequential JPEG's markers to know a decoder's verdict without decoding it.

Why: the upload check must refuse what libjpeg refuses (API: 422 for undecodable and truncated
files), and a decode costs about 65 ms for a 10 MB JPEG, most of an upload. For a sequential
Huffman-coded JPEG, libjpeg-turbo's fatal errors all come from its markers: table, frame and scan
headers that break its rules, and data that ends before the EOI. Damage inside entropy-coded data
it conceals (it decodes garbage and warns), so once every marker is known sound and the EOI is
there, the decode is known to succeed. Finding the markers means one C-speed scan of the
entropy-coded bytes for 0xFF not followed by a stuffed zero: about 4 ms for 10 MB.

The rules below are libjpeg-turbo's own (jdmarker.c get_sof/get_sos/get_dht/get_dqt/get_dri,
jdinput.c initial_setup/per_scan_setup/latch_quant_tables, jdhuff.c jpeg_make_d_derived_tbl,
jdsample.c), applied strictly. :func:`sequential_jpeg_is_sound` answers True only for a file
that passes all of them; for anything else (progressive or arithmetic coding, 12-bit samples,
fractional subsampling, fill bytes, missing tables, a missing EOI, damage in any header...)
it answers False, meaning "not known": the caller then decodes. A wrong True is the one
unsafe answer; tests/imaging/test_decode_check.py compares this against a full decode on
truncated, corrupted and header-damaged files of every flavour.
"""

from __future__ import annotations

import mmap
import re

from PIL import features

# libjpeg limits (jpeglib.h / jmorecfg.h).
MAX_DIMENSION = 65500
MAX_BLOCKS_IN_MCU = 10
MAX_COMPONENTS = 4  # Pillow decodes 1 (L), 3 (RGB/YCbCr) and 4 (CMYK/YCCK) components
SAMPLING_FACTORS = frozenset({1, 2, 4})
# More segments than this and the walk in Python would cost more than the decode it replaces.
MAX_SEGMENTS = 2048

# The rules are libjpeg-turbo's (the library Pillow's wheels bundle). A Pillow built against
# another JPEG library gets no fast path: its decoder decides, as before.
DECODER_IS_LIBJPEG_TURBO = bool(features.check_feature("libjpeg_turbo"))

SOI, EOI, SOS, DHT, DQT, DRI = 0xD8, 0xD9, 0xDA, 0xC4, 0xDB, 0xDD
SEQUENTIAL_HUFFMAN_SOF = frozenset({0xC0, 0xC1})  # baseline, extended sequential
SKIPPABLE = frozenset(range(0xE0, 0xF0)) | {0xFE}  # APPn and COM: length-prefixed, ignored

# The end of an entropy-coded segment: 0xFF followed by anything but a stuffed zero (and, with
# restart intervals, anything but RST0-7). 0xFF 0xFF (fill) ends it too, and is not sound.
# Any marker as libjpeg's next_marker finds it: fill bytes, then a code that is not a stuffed
# zero; RST0-7 are skipped by the search itself (parameterless, and many in some files).
_ANY_MARKER = re.compile(rb"\xff+[^\x00\xff\xd0-\xd7]")
_PARAMETERLESS = frozenset({0x01, SOI})
_SEGMENT_END = re.compile(rb"\xff[^\x00]")
_SEGMENT_END_RESTARTS = re.compile(rb"\xff[^\x00\xd0-\xd7]")


def progressive_scans_over(data: Data, limit: int) -> bool:
    """Whether a progressive JPEG holds more than ``limit`` scans: a decoding bomb.

    Why: a progressive scan can cover every block of the image in a dozen bytes (EOB runs),
    and libjpeg walks all of them for each scan, so 60 KB of repeated scans took 0.4 s to
    decode at 1/8 scale for a 4 MP image here, and a 25 MB upload at the pixel limit would
    take hours of CPU. Encoders write about 10 scans. The count is an upper bound of what
    libjpeg decodes, found as its marker reader finds markers: segments skipped by their
    length, anything else searched for 0xFF (fill bytes too) followed by a marker code, so
    garbage between segments hides no scan. Costs one search of the file (3 to 4 ms for 10 MB).
    """
    view = memoryview(data).cast("B")
    try:
        return _count_scans(view, limit) > limit
    finally:
        view.release()


def _count_scans(buf: memoryview, limit: int) -> int:
    size, pos, scans = len(buf), 2, 0
    while scans <= limit:
        found = _ANY_MARKER.search(buf, pos)
        if found is None:
            return scans
        code, pos = buf[found.end() - 1], found.end()
        if code == EOI:
            return scans
        if code in _PARAMETERLESS:
            continue
        if pos + 2 > size:
            return scans
        length = (buf[pos] << 8) | buf[pos + 1]
        if length < 2:
            return scans  # libjpeg stops here (JERR_BAD_LENGTH)
        scans += code == SOS
        pos += length  # past a scan header, the search runs through its entropy-coded data
    return scans


class _Unsure(Exception):
    """Raised where a rule is broken or a case is not modelled: the answer is 'decode it'."""


Data = bytes | bytearray | memoryview | mmap.mmap


def sequential_jpeg_is_sound(data: Data) -> bool:
    """True when libjpeg is known to decode ``data`` without a fatal error; False if unsure.

    ``data`` is the whole file (bytes or a read-only mmap). Bytes after the EOI are ignored, as
    libjpeg ignores them.
    """
    return _answer(data, headers_only=False)


def sequential_jpeg_headers(data: Data) -> bool:
    """True when everything up to the first scan is sound by the same rules: a test that costs
    microseconds (no entropy-coded data is read) of whether the full check may answer True."""
    return _answer(data, headers_only=True)


def _answer(data: Data, *, headers_only: bool) -> bool:
    if not DECODER_IS_LIBJPEG_TURBO:
        return False
    view = memoryview(data).cast("B")
    try:
        return _walk(view, headers_only)
    except (_Unsure, IndexError):
        return False
    finally:
        view.release()


def _walk(buf: memoryview, headers_only: bool) -> bool:
    size = len(buf)
    if size < 4 or buf[0] != 0xFF or buf[1] != SOI:
        raise _Unsure
    frame: _Frame | None = None
    tables = _Tables()
    restart_interval = 0
    pos = 2
    for _ in range(MAX_SEGMENTS):
        if pos + 2 > size or buf[pos] != 0xFF:
            raise _Unsure  # garbage or fill before a marker, or the data ends
        code = buf[pos + 1]
        if code == EOI:
            return frame is not None and frame.scans > 0
        length = _length(buf, pos)
        body = buf[pos + 4 : pos + 2 + length]
        pos += 2 + length
        if code in SKIPPABLE:
            continue
        if code == DQT:
            tables.define_quant(body)
        elif code == DHT:
            tables.define_huffman(body)
        elif code == DRI:
            if length != 4:
                raise _Unsure
            restart_interval = int.from_bytes(body, "big")
        elif code in SEQUENTIAL_HUFFMAN_SOF:
            if frame is not None:
                raise _Unsure  # a second SOF is fatal
            frame = _Frame(body)
        elif code == SOS:
            if frame is None:
                raise _Unsure
            frame.start_scan(body, tables)
            if headers_only:
                return True
            pattern = _SEGMENT_END_RESTARTS if restart_interval else _SEGMENT_END
            pos = _segment_end(pattern, buf, pos)
        else:
            raise _Unsure  # progressive, arithmetic, lossless, DNL, RSTn out of a scan, ...
    raise _Unsure


def _segment_end(pattern: re.Pattern[bytes], buf: memoryview, pos: int) -> int:
    """Where the entropy-coded data starting at ``pos`` ends: at its next marker.

    One search of the whole rest (about 4 ms for 10 MB, holding the GIL, within one switch
    interval). Searching in windows and yielding the GIL between them was measured too: with
    the upload's other threads waking at every yield, the upload got slower, not faster.
    """
    found = pattern.search(buf, pos)
    if found is None:
        raise _Unsure  # entropy-coded data runs to the end: truncated
    return found.start()


def _length(buf: memoryview, pos: int) -> int:
    """A segment's length field (it counts itself); the whole segment must be in the file."""
    length = (buf[pos + 2] << 8) | buf[pos + 3]
    if length < 2 or pos + 2 + length > len(buf):
        raise _Unsure
    return length


class _Tables:
    """Quantisation and Huffman tables as defined so far (a later DHT/DQT replaces one)."""

    def __init__(self) -> None:
        self.quant: set[int] = set()
        # (class, id) -> (counts per code length 1..16, symbols): class 0 is DC, 1 is AC.
        self.huffman: dict[tuple[int, int], tuple[bytes, bytes]] = {}

    def define_quant(self, body: memoryview) -> None:
        at = 0
        while at < len(body):
            precision, table = body[at] >> 4, body[at] & 0x0F
            entries = 64 * (2 if precision else 1)
            if precision > 1 or table > 3 or at + 1 + entries > len(body):
                raise _Unsure  # libjpeg pads short tables; not modelled
            values = bytes(body[at + 1 : at + 1 + entries])
            if precision:
                values = bytes(values[i] | values[i + 1] for i in range(0, entries, 2))
            if 0 in values:
                raise _Unsure  # a zero divisor is legal to libjpeg, but not a sound file
            self.quant.add(table)
            at += 1 + entries

    def define_huffman(self, body: memoryview) -> None:
        at = 0
        while at < len(body):
            if len(body) - at <= 16:
                raise _Unsure  # get_dht: leftover bytes are JERR_BAD_LENGTH
            klass, table = body[at] >> 4, body[at] & 0x0F
            counts = bytes(body[at + 1 : at + 17])
            total = sum(counts)
            if klass > 1 or table > 3 or total > 256 or at + 17 + total > len(body):
                raise _Unsure
            self.huffman[(klass, table)] = (counts, bytes(body[at + 17 : at + 17 + total]))
            at += 17 + total

    def require(self, klass: int, table: int) -> None:
        """The checks of jpeg_make_d_derived_tbl, run when a scan starts using a table.

        A missing table 0 or 1 would get libjpeg-turbo's standard tables (Motion-JPEG); that
        is not a sound file either, so it is 'unsure' like any other missing table.
        """
        entry = self.huffman.get((klass, table))
        if entry is None:
            raise _Unsure
        counts, symbols = entry
        code, assigned, length = 0, 0, 0
        for length, count in enumerate(counts, start=1):
            if assigned == len(symbols):
                break
            code += count
            assigned += count
            if code >= 1 << length:
                raise _Unsure  # JERR_BAD_HUFF_TABLE: codes overflow (or an all-ones code)
            code <<= 1
        if klass == 0 and any(symbol > 15 for symbol in symbols):
            raise _Unsure  # a DC symbol is a bit count of at most 15


class _Frame:
    """The SOF0/SOF1 frame header and which of its components the scans have covered."""

    def __init__(self, body: memoryview) -> None:
        if len(body) < 6:
            raise _Unsure
        precision = body[0]
        height = (body[1] << 8) | body[2]
        width = (body[3] << 8) | body[4]
        count = body[5]
        if precision != 8 or not 0 < width <= MAX_DIMENSION or not 0 < height <= MAX_DIMENSION:
            raise _Unsure  # 12-bit, a DNL-defined height, or too big
        if not 1 <= count <= MAX_COMPONENTS or count == 2 or len(body) != 6 + 3 * count:
            raise _Unsure
        self.components: dict[int, tuple[int, int, int]] = {}
        for i in range(count):
            ident, factors, quant = body[6 + 3 * i], body[7 + 3 * i], body[8 + 3 * i]
            h, v = factors >> 4, factors & 0x0F
            if h not in SAMPLING_FACTORS or v not in SAMPLING_FACTORS or quant > 3:
                raise _Unsure
            if ident in self.components:
                raise _Unsure  # libjpeg renames duplicate ids; not modelled
            self.components[ident] = (h, v, quant)
        max_h = max(h for h, _, _ in self.components.values())
        max_v = max(v for _, v, _ in self.components.values())
        if any(max_h % h or max_v % v for h, v, _ in self.components.values()):
            raise _Unsure  # JERR_FRACT_SAMPLE_NOTIMPL
        self.unscanned = set(self.components)
        self.scans = 0

    def start_scan(self, body: memoryview, tables: _Tables) -> None:
        """get_sos, per_scan_setup, latch_quant_tables and the table checks, for one scan.

        Every component in exactly one scan: a sequential file whose first scan held every
        component and that then starts another is JERR_EOI_EXPECTED; repeats are not modelled.
        """
        if len(body) < 1:
            raise _Unsure
        count = body[0]
        if not 1 <= count <= MAX_COMPONENTS or len(body) != 4 + 2 * count:
            raise _Unsure
        blocks = 0
        for i in range(count):
            ident, selectors = body[1 + 2 * i], body[2 + 2 * i]
            if ident not in self.unscanned:
                raise _Unsure  # unknown, repeated within the scan, or already scanned
            self.unscanned.discard(ident)
            h, v, quant = self.components[ident]
            if quant not in tables.quant:
                raise _Unsure  # JERR_NO_QUANT_TABLE
            tables.require(0, selectors >> 4)
            tables.require(1, selectors & 0x0F)
            blocks += h * v
        if count > 1 and blocks > MAX_BLOCKS_IN_MCU:
            raise _Unsure  # JERR_BAD_MCU_SIZE
        spectral_start, spectral_end, approximation = body[-3], body[-2], body[-1]
        if (spectral_start, spectral_end, approximation) != (0, 63, 0):
            raise _Unsure
        self.scans += 1
