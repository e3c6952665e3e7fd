"""image-origin: content-addressed image storage and CDN origin."""

from __future__ import annotations

from flask import Flask, Response

from app import logs
from app.settings import Settings, load
from app.staging import clean_staging

STALE_STAGING_SECONDS = 3600


class OriginFlask(Flask):
    def make_default_options_response(self) -> Response:
        """OPTIONS answers 204 with Allow and no body or content type, on every route,
        instead of Flask's empty ``text/html`` 200: this service never answers HTML there."""
        response = super().make_default_options_response()
        response.status_code = 204
        response.set_data(b"")
        del response.headers["Content-Type"]
        del response.headers["Content-Length"]
        return response


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app: settings, backends, blueprints."""
    from app.container import build_services
    from app.http import admin, api, errors, health, observability, openapi, serve
    from app.http.cached_hits import CachedHits
    from app.http.uploads import OriginRequest, discard_staging

    settings = settings or load()
    logs.configure(settings.log_level)
    services = build_services(settings)
    # Files left by a crashed worker; a live upload is never this old.
    clean_staging(settings.staging_dir, older_than=STALE_STAGING_SECONDS)

    # No app-wide /static route; the admin page serves its own files under /admin/static.
    app = OriginFlask(__name__, static_folder=None)
    app.request_class = OriginRequest
    # Paths are content addresses and signed tokens: never rewrite them (no slash merging,
    # no redirects), so what was signed is exactly what is routed.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.url_map.converters["sha256"] = serve.Sha256Converter
    app.config["IMAGE_ORIGIN"] = services
    # Multipart overhead on top of the file limit; the staging file enforces the exact limit.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + 64 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]
    openapi.document_bytes()  # load (and check) the API description at start
    errors.init_app(app)
    observability.init_app(app)  # first hooks: request id and timing exist for every request
    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(serve.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(admin.bp)
    app.teardown_request(discard_staging)

    @app.after_request
    def _security_headers(response):  # type: ignore[no-untyped-def]
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    # Cache hits of public variants skip Flask (app/http/cached_hits.py); inside ProxyFix, so
    # they see the same client address.
    app.wsgi_app = CachedHits(app.wsgi_app, services)  # type: ignore[method-assign]
    if settings.trusted_proxies:
        # Believe X-Forwarded-For/-Proto/-Host only as far as the configured number of proxies
        # (nginx, then maybe a CDN or load balancer) that each append to them.
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n
        )
    return app
