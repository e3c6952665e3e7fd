"""atheris (coverage-guided, libFuzzer) target: probe, then render, on arbitrary bytes.

The property is the service's: an upload is either accepted (probe returns) or refused with a
4xx domain error, and anything probe accepts renders or is refused with a 4xx. One more, for
the upload check's marker path: a JPEG that ``sequential_jpeg_is_sound`` vouches for must
decode in full (that check stands in for a decode, so a wrong "sound" would store a file that
cannot be shown). Any other exception, or an assertion below, is a crash that libFuzzer saves
as ``crash-<sha1>``.

Pillow's format plugins are Python, so instrumenting them (and app.imaging) gives libFuzzer
coverage of the parsers our sniffing lets through. Limits are small (4 MP, 50 frames) so each
input costs milliseconds; the live tests check the real limits.

Run by tests/hardening/test_atheris.py for a bounded time; by hand:
    .venv/bin/python tests/hardening/fuzz_probe.py -max_total_time=60 /tmp/corpus
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import warnings

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# Flask, werkzeug and the rest of ``app`` are imported first so that only Pillow and
# app.imaging are instrumented (instrumenting everything costs half a minute at start).
import magic  # noqa: E402, F401

from app.errors import DomainError  # noqa: E402
from app.settings import VariantSpec, load  # noqa: E402

with atheris.instrument_imports(include=["PIL", "app.imaging"]):
    from PIL import GifImagePlugin, Image, JpegImagePlugin, PngImagePlugin, WebPImagePlugin  # noqa: F401

    from app.imaging.jpeg_structure import sequential_jpeg_is_sound
    from app.imaging.pipeline import render
    from app.imaging.probe import probe

warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF; a warning is not a failure

SETTINGS = load(
    {
        "IMAGE_ORIGIN_DATA_DIR": tempfile.gettempdir(),
        "IMAGE_ORIGIN_MAX_PIXELS": "4000000",
        "IMAGE_ORIGIN_MAX_FRAMES": "50",
        "IMAGE_ORIGIN_PREGENERATE": "",
    }
)
# One spec per encoder and per resize path: sized and unsized, every output format.
SPECS = (
    VariantSpec("webp", "low", 160),
    VariantSpec("jpeg", "low", None),
    VariantSpec("avif", "low", 160),
)


def _refused(exc: DomainError) -> None:
    if not 400 <= exc.status < 500:
        raise AssertionError(f"{type(exc).__name__} answers {exc.status}, not a 4xx") from exc


def _decodes_in_full(data: bytes) -> None:
    """What the marker path promises, checked by the decoder itself (within the pixel limit;
    probe refuses larger images before any decode anyway)."""
    im = Image.open(io.BytesIO(data), formats=["JPEG"])
    if im.width * im.height > SETTINGS.max_pixels:
        return
    try:
        im.load()
    except Exception as exc:
        raise AssertionError(f"the marker path vouched for a JPEG libjpeg refuses: {exc}") from exc


def test_one_input(data: bytes) -> None:
    if sequential_jpeg_is_sound(data):
        _decodes_in_full(data)
    try:
        info = probe(data, SETTINGS)
    except DomainError as exc:
        _refused(exc)
        return
    assert info.width > 0 and info.height > 0, info
    assert info.width * info.height * info.frames <= SETTINGS.max_pixels, info
    for spec in SPECS:
        try:
            out = render(data, spec, SETTINGS)
        except DomainError as exc:
            _refused(exc)
            continue
        assert out.data and out.width > 0 and out.height > 0, spec


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
