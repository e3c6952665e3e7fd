"""Image routes for CDNs and browsers: no key, immutable, cacheable.

The handlers only parse the path and shape the response; every rule (order of checks, privacy,
integrity) lives in the service. Signed paths (``/s/<token>/...``) are verified on the raw path
before routing results are used, so a bad token is 403 whatever follows it.
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.routing import BaseConverter

from app.errors import Forbidden, NotFoundError
from app.http.observability import request_id
from app.imaging.variants import negotiate, parse_variant
from app.logs import event
from app.signing import SIGNED_PREFIX, VerifiedPath, raw_request_path, redacted
from app.storage import keys
from app.variant_service import etag_for_key, variant_storage_key

bp = Blueprint("serve", __name__)
IMMUTABLE = "public, max-age=31536000, immutable"
ONE_YEAR = 31536000
# Defence in depth for content opened directly in a browser: even if some client ignored the
# image Content-Type and nosniff, the document could run nothing and load nothing (the same
# policy GitHub serves user content with). Images shown in <img> are not affected by it.
IMAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
VARIANT_RULE = "/<sha256:digest>/<fmt>/<quality>"
VARIANT_WIDTH_RULE = VARIANT_RULE + "/<width>"
# Where a variant answer names its cache key for app.http.cached_hits (the WSGI environ).
VARIANT_KEY_ENVIRON = "image_origin.variant_key"


class Sha256Converter(BaseConverter):
    """``<sha256:digest>``: 64 lowercase hex. Image routes then never overlap /v1/... paths
    (``/v1/images/<id>/restore`` used to match ``/<digest>/<fmt>/<quality>/<width>`` too, so its
    405 and Allow header named GET), and a malformed hash is a 404 from routing alone."""

    regex = "[0-9a-f]{64}"


def _services():  # type: ignore[no-untyped-def]
    return current_app.config["IMAGE_ORIGIN"]


@bp.before_app_request
def _verify_signed_path() -> None:
    """Signature first: before any lookup, decoding or storage access. A method the route
    does not serve (TRACE, POST) is its 405 whatever the token: nothing is looked up for it.
    A refusal is logged (``signature_rejected``: its code and the path with the token
    redacted, never the token)."""
    if isinstance(request.routing_exception, MethodNotAllowed):
        return
    if request.path.startswith(SIGNED_PREFIX) or request.environ.get(
        "RAW_URI", request.environ.get("REQUEST_URI", "")
    ).startswith(SIGNED_PREFIX):
        try:
            g.signed = _services().signer.verify_raw(raw_request_path(request.environ))
        except Forbidden as exc:
            # The decoded path, so a percent-encoded prefix (/%73/<token>/...) is redacted too.
            event(
                "signature_rejected",
                level=logging.INFO,
                code=exc.code,
                method=request.method,
                path=redacted(request.path),
                request_id=request_id(),
            )
            raise


@bp.after_request
def _image_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", IMAGE_CSP)
    return response


def _require_hex(digest: str) -> None:
    if not keys.is_hex_digest(digest):
        raise NotFoundError("no such content")


def _cache_headers(private: bool) -> dict[str, str]:
    """Immutable for public URLs; a signed response is never kept past its URL's expiry."""
    signed: VerifiedPath | None = g.get("signed")
    if signed is None:
        return {"Cache-Control": IMMUTABLE}
    remaining = min(signed.remaining(time.time()), ONE_YEAR)
    scope = "private" if private else "public"
    return {
        "Cache-Control": f"{scope}, max-age={remaining}",
        "Expires": _http_date(signed.expires_at),
    }


def _http_date(ts: float) -> str:
    from email.utils import formatdate

    return formatdate(ts, usegmt=True)


def _not_modified(etag: str, headers: dict[str, str]) -> Response | None:
    """304 when If-None-Match names ``etag`` (weak comparison, as RFC 9110 asks)."""
    if request.if_none_match and request.if_none_match.contains_weak(etag.strip('"')):
        return Response(status=304, headers=headers)
    return None


@bp.route("/<sha256:digest>/original", methods=["GET", "HEAD"])
@bp.route("/s/<token>/<sha256:digest>/original", methods=["GET", "HEAD"])
def original(digest: str, token: str | None = None) -> Response:
    _require_hex(digest)
    svc = _services().service
    obj = svc.object_for_serving(digest, signed=g.get("signed") is not None)
    svc.record_access(obj)
    etag = f'"{obj.hash}"'
    headers = {"ETag": etag, **_cache_headers(obj.private)}
    not_modified = _not_modified(etag, headers)
    if not_modified is not None:
        return not_modified
    if request.method == "HEAD":
        svc.check_original_readable(obj)
        headers["Content-Length"] = str(obj.size)
        return Response(status=200, headers=headers, content_type=obj.mime_type)
    verified = svc.read_original(obj)
    headers["Content-Length"] = str(verified.size)
    response = Response(verified.iter_chunks(), status=200, headers=headers)
    response.content_type = obj.mime_type
    response.call_on_close(verified.close)
    return response


@bp.route(VARIANT_RULE, methods=["GET", "HEAD"])
@bp.route(VARIANT_WIDTH_RULE, methods=["GET", "HEAD"])
@bp.route("/s/<token>" + VARIANT_RULE, methods=["GET", "HEAD"])
@bp.route("/s/<token>" + VARIANT_WIDTH_RULE, methods=["GET", "HEAD"])
def variant(
    digest: str, fmt: str, quality: str, width: str | None = None, token: str | None = None
) -> Response:
    _require_hex(digest)
    settings = _services().settings
    chosen = negotiate(request.headers.get("Accept")) if fmt == "auto" else fmt
    spec = parse_variant(chosen, quality, width, settings)
    svc = _services().service
    obj = svc.object_for_serving(digest, signed=g.get("signed") is not None)
    svc.record_access(obj)
    key = variant_storage_key(obj.hash, spec, settings)
    headers = {"ETag": etag_for_key(key), **_cache_headers(obj.private)}
    if fmt == "auto":
        headers["Vary"] = "Accept"
    not_modified = _not_modified(headers["ETag"], headers)
    if not_modified is not None:
        return not_modified
    result = svc.get_variant(obj, spec)
    request.environ[VARIANT_KEY_ENVIRON] = (obj.hash, key)
    headers["Content-Length"] = str(len(result.data))
    response = Response(result.data, status=200, headers=headers)
    response.content_type = result.content_type
    return response
