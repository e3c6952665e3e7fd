"""Structured log events: one JSON object per line, so operators can grep and ship them."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

logger = logging.getLogger("image_origin")


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``name`` with ``fields`` as one JSON line. Never pass secrets or tokens here."""
    record = {"event": name, "ts": round(time.time(), 3), **fields}
    logger.log(level, json.dumps(record, default=str, sort_keys=True))


def configure(level: str) -> None:
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
