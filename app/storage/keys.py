"""Blob keys: the one place where keys are built and validated.

Originals live at ``sha256:<hex>``; stored variants at
``variant:<hex>/v<pipeline>-<fingerprint>/<format>/<quality>[/<width>]``, where the
fingerprint is 8 hex digits of the encoder settings the variant was made with. Backends accept
nothing else, so a path or object name is never built from anything but a validated hex
digest and a small set of names checked here.
"""

from __future__ import annotations

import re

HEX_RE = re.compile(r"^[0-9a-f]{64}\Z")
ORIGINAL_RE = re.compile(r"^sha256:([0-9a-f]{64})\Z")
VARIANT_RE = re.compile(
    r"^variant:([0-9a-f]{64})/v([0-9]{1,6}(?:-[0-9a-f]{8})?)/([a-z0-9]{1,16})/([a-z0-9_-]{1,32})(?:/([0-9]{1,5}))?\Z"
)


FULL_LEAF = "full"


class InvalidKey(ValueError):
    """A key that does not match either form."""


def is_hex_digest(value: str) -> bool:
    return bool(HEX_RE.match(value))


def original_key(hex_digest: str) -> str:
    if not HEX_RE.match(hex_digest):
        raise InvalidKey(hex_digest)
    return f"sha256:{hex_digest}"


def variant_key(
    hex_digest: str, version: int | str, fmt: str, quality: str, width: int | None
) -> str:
    key = f"variant:{hex_digest}/v{version}/{fmt}/{quality}"
    if width is not None:
        key += f"/{width}"
    validate(key)
    return key


def variant_prefix(hex_digest: str) -> str:
    if not HEX_RE.match(hex_digest):
        raise InvalidKey(hex_digest)
    return f"variant:{hex_digest}/"


def validate(key: str) -> str:
    if ORIGINAL_RE.match(key) or VARIANT_RE.match(key):
        return key
    raise InvalidKey(key)


def hex_of(key: str) -> str:
    """The content hash a key belongs to."""
    m = ORIGINAL_RE.match(key) or VARIANT_RE.match(key)
    if not m:
        raise InvalidKey(key)
    return m.group(1)


def relative_path(key: str) -> str:
    """A slash-separated relative path for the key, fanned out by the first hex digits.

    ``sha256:abcd...`` -> ``sha256/ab/cd/abcd...``;
    ``variant:abcd.../v1/webp/high/640`` -> ``variants/ab/cd/abcd.../v1/webp/high/640``;
    a variant without a width ends in ``/full``, so on disk it never collides with the directory
    holding the sized variants of the same format and quality.
    """
    m = ORIGINAL_RE.match(key)
    if m:
        h = m.group(1)
        return f"sha256/{h[:2]}/{h[2:4]}/{h}"
    m = VARIANT_RE.match(key)
    if m:
        h = m.group(1)
        rest = key[len("variant:") + 64 + 1 :]
        leaf = "" if m.group(5) else f"/{FULL_LEAF}"
        return f"variants/{h[:2]}/{h[2:4]}/{h}/{rest}{leaf}"
    raise InvalidKey(key)


def key_from_relative_path(path: str) -> str | None:
    """Inverse of relative_path; None for anything that is not a key we made."""
    parts = path.split("/")
    if len(parts) == 4 and parts[0] == "sha256" and HEX_RE.match(parts[3]):
        key = f"sha256:{parts[3]}"
    elif len(parts) >= 7 and parts[0] == "variants" and HEX_RE.match(parts[3]):
        tail = parts[3:-1] if parts[-1] == FULL_LEAF else parts[3:]
        key = "variant:" + "/".join(tail)
    else:
        return None
    try:
        validate(key)
    except InvalidKey:
        return None
    if relative_path(key) != path:
        return None
    return key


def variant_url_path(key: str) -> str:
    """``variant:<hex>/v1-…/webp/high/640`` -> ``<hex>/webp/high/640`` (the public route)."""
    m = VARIANT_RE.match(key)
    if not m:
        raise InvalidKey(key)
    tail = f"/{m.group(5)}" if m.group(5) else ""
    return f"{m.group(1)}/{m.group(3)}/{m.group(4)}{tail}"
