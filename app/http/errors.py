"""Every error leaves as the contract's JSON: {"error": {"code", "message"}}.

Domain errors carry their own status and code. werkzeug's HTTP errors (404 for unknown routes,
405, 413 from the content-length check) are mapped to snake_case codes. Anything else is a 500
whose body names no path, key or stack frame; the details go to the log only.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from app.errors import DomainError
from app.http.uploads import drain_refused_body
from app.logs import event

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    429: "too_many_requests",
    431: "request_header_fields_too_large",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def init_app(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain(exc: DomainError) -> Response:
        if exc.status == 413:
            drain_refused_body()
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            drain_refused_body()  # werkzeug's own checks: content length, form parts
        code = CODES.get(status, "http_error")
        message = exc.description if status != 413 else "the upload is larger than the limit"
        response = error_response(status, code, message or code)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        event("unhandled_error", level=logging.ERROR, error=type(exc).__name__, detail=str(exc))
        app.logger.exception("unhandled error")
        return error_response(500, "internal_error", "internal error")
