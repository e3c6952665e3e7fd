"""Liveness, readiness and metrics."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    services = current_app.config["IMAGE_ORIGIN"]
    checks = services.readiness()
    down = sorted(name for name, ok in checks.items() if not ok)
    body = {"status": "ok" if not down else "unavailable", "checks": checks}
    if down:
        body["error"] = {"code": "not_ready", "message": "not reachable: " + ", ".join(down)}
    return jsonify(body), (503 if down else 200)


@bp.get("/metrics")
def metrics() -> Response:
    from app.http.observability import refresh_gauges
    from app.metrics_export import render

    refresh_gauges(current_app.config["IMAGE_ORIGIN"])
    data, content_type = render()
    return Response(data, content_type=content_type)
