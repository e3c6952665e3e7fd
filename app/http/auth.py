"""API-key authentication: ``Authorization: Bearer <key>``, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import current_app, g, request

from app.errors import Forbidden, Unauthorized
from app.settings import ApiKey


def authenticate() -> ApiKey:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("an API key is required: Authorization: Bearer <key>")
    presented = token.strip().encode()
    found: ApiKey | None = None
    # Compare against every key without stopping early, so timing says nothing about which
    # key (or how much of one) matched.
    for candidate in current_app.config["IMAGE_ORIGIN"].settings.api_keys:
        if hmac.compare_digest(candidate.key.encode(), presented):
            found = candidate
    if found is None:
        raise Unauthorized("unknown API key")
    return found


def require_key(admin: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = authenticate()
            if admin and not key.admin:
                raise Forbidden("an admin key is required", code="admin_required")
            g.api_key = key
            return view(*args, **kwargs)

        return wrapper

    return decorator
