"""/admin: a small upload page for operators and frontend developers.

Plain HTML, CSS and JS from app/static (no build step). The page talks to the public API with
the key the user pastes, so it holds no privilege of its own. It is served with a strict
Content-Security-Policy: scripts and styles only from this origin (no inline script), images
from this origin or the CDN base URL, requests only to this origin, no framing.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, send_from_directory

STATIC = Path(__file__).resolve().parent.parent / "static"
bp = Blueprint(
    "admin", __name__, url_prefix="/admin", static_folder=str(STATIC), static_url_path="/static"
)


def content_security_policy(cdn_base_url: str | None) -> str:
    img = ["'self'", "data:", "blob:"]
    if cdn_base_url:
        parts = urlsplit(cdn_base_url)
        img.append(f"{parts.scheme}://{parts.netloc}")
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src {' '.join(img)}",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


@bp.get("")
def page() -> Response:
    return send_from_directory(STATIC, "admin.html", mimetype="text/html", max_age=0)


@bp.after_request
def _headers(response: Response) -> Response:
    settings = current_app.config["IMAGE_ORIGIN"].settings
    response.headers["Content-Security-Policy"] = content_security_policy(settings.cdn_base_url)
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response
