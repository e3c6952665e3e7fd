"""Signed, expiring URLs: ``/s/<token>/<path>`` where the token is ``<expiry>.<signature>``.

The signature is an itsdangerous HMAC-SHA256 over the expiry and the exact path that follows the
token, so no part of the URL can be changed, moved or extended without breaking it. Verification
works on the raw request path, before anything is percent-decoded, looked up or read.
Key rotation: the first configured key signs, every listed key verifies; a key removed from the
list invalidates its URLs.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from itsdangerous import BadData, Signer
from itsdangerous.encoding import base64_decode, base64_encode

from app.errors import DomainError, Forbidden

SALT = "image-origin.signed-url.v1"
SIGNED_PREFIX = "/s/"
# One spelling per token: no leading zeros in the expiry, and (checked below) the signature in
# canonical base64, so a valid URL has no aliases (the last base64 character carries 2 unused
# bits that a decoder ignores).
TOKEN_RE = re.compile(r"(0|[1-9][0-9]{0,11})\.([A-Za-z0-9_-]{20,100})")
MAX_RAW_PATH = 512


class SigningUnavailable(DomainError):
    """No signing key is configured."""

    status, code = 503, "signing_unavailable"


@dataclass(frozen=True)
class VerifiedPath:
    path: str  # the raw path after the token, without its leading slash
    expires_at: int

    def remaining(self, now: float) -> int:
        return max(0, int(self.expires_at - now))


class UrlSigner:
    def __init__(self, keys: Sequence[str]) -> None:
        # itsdangerous signs with the last key and verifies with all: list ours reversed.
        self._signer = (
            Signer(
                list(reversed(keys)),
                salt=SALT,
                key_derivation="hmac",
                digest_method=hashlib.sha256,
            )
            if keys
            else None
        )

    def token(self, path: str, expires_at: int) -> str:
        if self._signer is None:
            raise SigningUnavailable("no signing key is configured")
        signature = self._signer.get_signature(_message(path, expires_at)).decode("ascii")
        return f"{expires_at}.{signature}"

    def sign_path(self, path: str, expires_at: int) -> str:
        """``hash/format/quality[/width]`` or ``hash/original`` -> ``/s/<token>/<path>``."""
        path = path.lstrip("/")
        return f"{SIGNED_PREFIX}{self.token(path, expires_at)}/{path}"

    def verify_raw(self, raw_path: str, now: float | None = None) -> VerifiedPath:
        """Check a raw ``/s/<token>/<path>``; Forbidden with signature_invalid or
        signature_expired otherwise. Constant-time comparison inside itsdangerous."""
        if self._signer is None:
            raise Forbidden("signed URLs are not enabled", code="signature_invalid")
        # Every path we sign is ASCII (hex, format, preset, width); anything else is refused
        # before it is encoded or compared.
        if (
            not raw_path.startswith(SIGNED_PREFIX)
            or len(raw_path) > MAX_RAW_PATH
            or not raw_path.isascii()
        ):
            raise _invalid()
        token, sep, path = raw_path[len(SIGNED_PREFIX) :].partition("/")
        match = TOKEN_RE.fullmatch(token)
        if not sep or not path or match is None:
            raise _invalid()
        expires_at = int(match.group(1))
        signature = match.group(2).encode("ascii")
        try:
            valid = base64_encode(base64_decode(signature)) == signature
            valid = valid and self._signer.verify_signature(_message(path, expires_at), signature)
        except BadData:  # not base64, or not the signature
            valid = False
        if not valid:
            raise _invalid()
        if (time.time() if now is None else now) > expires_at:
            raise Forbidden("this signed URL has expired", code="signature_expired")
        return VerifiedPath(path, expires_at)


def _message(path: str, expires_at: int) -> bytes:
    return f"{expires_at}\n{path}".encode()


def _invalid() -> Forbidden:
    return Forbidden("the URL signature is not valid", code="signature_invalid")


def raw_request_path(environ: dict) -> str:  # type: ignore[type-arg]
    """The path exactly as the client sent it, before any percent-decoding."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not raw:
        return "\0"  # unknown server: never matches a signed path
    if not raw.startswith("/"):
        raw = urlsplit(raw).path or "/"  # absolute-form request target
    return raw.split("?", 1)[0]


def redacted(path: str) -> str:
    """A signed path fit for a log: whatever stands in the token's place (the segment after
    ``/s/``) replaced by ``-``, as the access log writes it (``/s/-/<hash>/...``), and cut to
    MAX_RAW_PATH characters."""
    first, _, rest = path.removeprefix("/").partition("/")
    return f"/{first}/-/{rest.partition('/')[2]}"[:MAX_RAW_PATH]


def loggable_path(raw: str) -> str:
    """A raw request path fit for a log: a signed one redacted (:func:`redacted`), also when
    its prefix is percent-encoded (``/%73/<token>/...``, which routes as ``/s/...``)."""
    if raw.startswith(SIGNED_PREFIX) or unquote(raw).startswith(SIGNED_PREFIX):
        return redacted(raw)
    return raw


def variant_path(digest: str, fmt: str, quality: str | None, width: int | None) -> str:
    """The path a signature covers: ``hash/original`` or ``hash/format/quality[/width]``."""
    if fmt == "original":
        return f"{digest}/original"
    tail = f"/{width}" if width is not None else ""
    return f"{digest}/{fmt}/{quality}{tail}"
