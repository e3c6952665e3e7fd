"""The authenticated JSON API: upload, list, get, delete, restore; admin object views."""

from __future__ import annotations

import re
import time

from flask import Blueprint, Response, current_app, g, jsonify, request

from app.errors import BadRequest, NotFoundError
from app.http.auth import require_key
from app.http.documents import base_url, object_document, reference_document, rfc3339
from app.http.uploads import read_upload
from app.imaging.variants import parse_variant
from app.metadata.sql import InvalidCursor
from app.settings import FORMATS
from app.signing import variant_path
from app.storage import keys

bp = Blueprint("api", __name__, url_prefix="/v1")
MAX_LIMIT = 1000
# A signed-url request is a few short fields; a larger body is refused before it is parsed.
MAX_JSON_BYTES = 16 * 1024
# ASCII digits only: str.isdigit() also accepts "²" and "٣", and int() rejects more than 4300
# digits with a ValueError; both used to escape as 500s.
_INT_ARG_RE = re.compile(r"[0-9]{1,9}")
# Reference ids are "img_" + token_urlsafe(16) (app.service.new_reference_id); anything else is
# answered 404 before the database sees it (no NUL bytes, surrogates or megabyte ids in SQL).
_REF_ID_RE = re.compile(r"img_[A-Za-z0-9_-]{1,64}")


def _services():  # type: ignore[no-untyped-def]
    return current_app.config["IMAGE_ORIGIN"]


@bp.post("/images")
@require_key()
def upload() -> tuple[Response, int, dict[str, str]]:
    svc = _services().service
    up = read_upload()
    result = svc.ingest(up.staged, owner=g.api_key.owner, filename=up.filename, private=up.private)
    doc = reference_document(result.reference, result.object, deduplicated=result.deduplicated)
    return jsonify(doc), 201, {"Location": f"/v1/images/{result.reference.id}"}


@bp.get("/images")
@require_key()
def list_images() -> Response:
    limit = _int_arg("limit", default=50, lo=1, hi=MAX_LIMIT)
    cursor = request.args.get("cursor") or None
    try:
        items, nxt = _services().service.list_references(g.api_key.owner, limit, cursor)
    except InvalidCursor:
        raise BadRequest("cursor is not valid", code="invalid_cursor") from None
    return jsonify({"items": [reference_document(r, o) for r, o in items], "next_cursor": nxt})


@bp.get("/images/<ref_id>")
@require_key()
def get_image(ref_id: str) -> Response:
    _check_ref_id(ref_id)
    ref, obj = _services().service.get_reference(g.api_key.owner, ref_id)
    return jsonify(reference_document(ref, obj))


@bp.delete("/images/<ref_id>")
@require_key()
def delete_image(ref_id: str) -> tuple[str, int]:
    _check_ref_id(ref_id)
    _services().service.delete(g.api_key.owner, ref_id)
    return "", 204


@bp.post("/images/<ref_id>/restore")
@require_key()
def restore_image(ref_id: str) -> Response:
    _check_ref_id(ref_id)
    ref, obj = _services().service.restore(g.api_key.owner, ref_id)
    return jsonify(reference_document(ref, obj))


@bp.post("/images/<ref_id>/signed-url")
@require_key()
def signed_url(ref_id: str) -> Response:
    _check_ref_id(ref_id)
    services = _services()
    ref, obj = services.service.get_reference(g.api_key.owner, ref_id)
    body = _json_body()
    if not isinstance(body, dict):
        raise BadRequest("send a JSON object", code="invalid_json")
    fmt = body.get("format")
    quality = body.get("quality")
    width = body.get("width")
    expires_in = body.get("expires_in")
    if fmt == "original":
        if quality is not None or width is not None:
            raise BadRequest("original takes no quality or width", code="invalid_variant")
    else:
        if fmt != "auto" and not isinstance(fmt, str):
            raise BadRequest("format is required", code="unknown_format")
        if not isinstance(quality, str):
            raise BadRequest("quality is required", code="unknown_quality")
        if width is not None and (isinstance(width, bool) or not isinstance(width, int)):
            raise BadRequest("width must be an integer", code="unknown_width")
        parse_variant(
            "jpeg" if fmt == "auto" else fmt,
            quality,
            None if width is None else str(width),
            services.settings,
        )
    max_seconds = services.settings.signed_url_max_seconds
    if (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int)
        or not 0 < expires_in <= max_seconds
    ):
        raise BadRequest(
            f"expires_in must be an integer from 1 to {max_seconds}", code="invalid_expires_in"
        )
    expires_at = int(time.time()) + expires_in
    path = variant_path(obj.hash, fmt, quality, width)
    url = base_url(services.settings) + services.signer.sign_path(path, expires_at)
    return jsonify({"url": url, "expires_at": rfc3339(expires_at)})


@bp.get("/objects/<digest>")
@require_key(admin=True)
def get_object(digest: str) -> Response:
    svc = _services().service
    if not keys.is_hex_digest(digest):
        raise NotFoundError("no such object")
    obj = svc._db(svc.meta.get_object, digest)
    if obj is None:
        raise NotFoundError("no such object")
    return jsonify(object_document(obj, _variants(digest)))


@bp.get("/objects")
@require_key(admin=True)
def list_objects() -> Response:
    svc = _services().service
    limit = _int_arg("limit", default=100, lo=1, hi=MAX_LIMIT)
    try:
        page = svc._db(svc.meta.list_objects, limit, request.args.get("cursor") or None)
    except InvalidCursor:
        raise BadRequest("cursor is not valid", code="invalid_cursor") from None
    return jsonify(
        {
            "items": [object_document(o, _variants(o.hash)) for o in page.items],
            "next_cursor": page.next_cursor,
        }
    )


@bp.get("/config")
def public_config() -> Response:
    settings = _services().settings
    return jsonify(
        {
            "formats": list(FORMATS),
            "presets": {name: dict(per) for name, per in settings.presets.items()},
            "widths": list(settings.widths),
            "max_output_side": settings.max_output_side,
            "cdn_base_url": (settings.cdn_base_url or request.host_url).rstrip("/"),
        }
    )


def _variants(digest: str) -> list[dict[str, object]]:
    svc = _services().service
    return [
        {
            "key": v.key,
            "size": v.size,
            "content_type": v.content_type,
            "created_at": rfc3339(v.created_at),
        }
        for v in svc._db(svc.meta.list_variants, digest)
    ]


def _check_ref_id(ref_id: str) -> None:
    if not _REF_ID_RE.fullmatch(ref_id):
        raise NotFoundError("no such image")


def _json_body() -> object:
    """The JSON body, or None if it is not JSON; 413 past MAX_JSON_BYTES (with or without a
    Content-Length), and nesting deep enough to exhaust the parser's recursion is "not JSON"."""
    request.max_content_length = MAX_JSON_BYTES
    try:
        return request.get_json(silent=True)
    except RecursionError:
        return None


def _int_arg(name: str, *, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not _INT_ARG_RE.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise BadRequest(f"{name} must be an integer from {lo} to {hi}", code=f"invalid_{name}")
    return int(raw)
