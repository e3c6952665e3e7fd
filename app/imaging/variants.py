"""Variant names from URL parts, and ``auto`` format negotiation.

Parsing is strict on purpose: every accepted spelling is a distinct cache key and stored object,
so ``0640``, ``+640`` or ``640.0`` must be 400s rather than aliases of ``640``.
"""

from __future__ import annotations

import re

from app.errors import BadRequest
from app.settings import FORMATS, Settings, VariantSpec

# Part of every stored variant's key: bump it whenever encoder output changes (new presets
# semantics, resampling, colour handling, codec upgrades), so old variants are not served.
# 2: large resizes made in two bands (app/imaging/pipeline.py); 3: JPEG progressive is a preset
# option (baseline unless a preset asks), encoder defaults when a preset omits the effort;
# 4: JPEG sources decoded at 3/8 where that covers the target (app/imaging/jpeg_scale.py).
PIPELINE_VERSION = 4

CONTENT_TYPES: dict[str, str] = {"jpeg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}
EXTENSIONS: dict[str, str] = {"jpeg": "jpg", "webp": "webp", "avif": "avif"}

# ASCII digits, no sign, no leading zero, at most 5 digits (int() would take "٦٤٠" or "+640").
_WIDTH_RE = re.compile(r"[1-9][0-9]{0,4}")
# RFC 9110 qvalue: "0" ["." 0*3DIGIT] / "1" ["." 0*3("0")].
_QVALUE_RE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")


def parse_variant(fmt: str, quality: str, width: str | None, settings: Settings) -> VariantSpec:
    """Validate URL parts into a VariantSpec; BadRequest (400) naming the part otherwise.

    ``fmt`` must already be concrete (``auto`` is resolved by :func:`negotiate` first).
    """
    if fmt not in FORMATS:
        raise BadRequest(
            f"unknown format {fmt[:32]!r}; use one of {', '.join(FORMATS)}", code="unknown_format"
        )
    if quality not in settings.presets:
        names = ", ".join(sorted(settings.presets))
        raise BadRequest(
            f"unknown quality {quality[:32]!r}; use one of {names}", code="unknown_quality"
        )
    if width is None:
        return VariantSpec(fmt, quality, None)
    if not _WIDTH_RE.fullmatch(width) or int(width) not in settings.widths:
        allowed = " ".join(str(w) for w in settings.widths)
        raise BadRequest(
            f"unknown width {width[:32]!r}; use one of {allowed}", code="unknown_width"
        )
    return VariantSpec(fmt, quality, int(width))


def negotiate(accept_header: str | None) -> str:
    """Resolve ``auto``: ``avif``, else ``webp``, if the Accept header names that type itself
    with q > 0; else ``jpeg``, which every client can show.

    Wildcards (``*/*``, ``image/*``) do not count: browsers send them for everything, and a
    client that cannot show AVIF would otherwise get it. Media types are compared case-
    insensitively. An entry whose q is not a valid RFC 9110 qvalue (``q=abc``, ``q=2``,
    ``q=-1``) is ignored, so a broken header falls back to JPEG rather than risk an unreadable
    format. If a type is listed more than once, an explicit ``q=0`` anywhere wins (refusal).
    """
    accepted = _explicit_image_types(accept_header or "")
    for fmt in ("avif", "webp"):
        if accepted.get(f"image/{fmt}", False):
            return fmt
    return "jpeg"


def _explicit_image_types(header: str) -> dict[str, bool]:
    """Media type -> acceptable (q > 0) for each well-formed entry of an Accept header."""
    result: dict[str, bool] = {}
    for entry in header[:4096].split(","):
        media_type, *params = (part.strip() for part in entry.split(";"))
        media_type = media_type.lower()
        if not media_type.startswith("image/"):
            continue
        q: float | None = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                q = float(value) if _QVALUE_RE.fullmatch(value) else None
        if q is None:
            continue
        result[media_type] = result.get(media_type, True) and q > 0
    return result
