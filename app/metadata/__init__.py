"""Metadata backends, picked by the database URL's scheme."""

from __future__ import annotations

from collections.abc import Callable

from app.metadata.base import (
    DAMAGE_BLOB_MISSING,
    DAMAGE_MISSING_OBJECT,
    TIER_ARCHIVED,
    TIER_COLD,
    TIER_HOT,
    TIER_RESTORING,
    TIERS,
    ContentInfo,
    DamageRecord,
    GcCandidate,
    MetadataError,
    MetadataStore,
    NeedsBlob,
    ObjectClaimed,
    ObjectRecord,
    Page,
    ReferenceRecord,
    VariantRecord,
)
from app.settings import Settings

__all__ = [
    "DAMAGE_BLOB_MISSING",
    "DAMAGE_MISSING_OBJECT",
    "TIERS",
    "TIER_ARCHIVED",
    "TIER_COLD",
    "TIER_HOT",
    "TIER_RESTORING",
    "ContentInfo",
    "DamageRecord",
    "GcCandidate",
    "MetadataError",
    "MetadataStore",
    "NeedsBlob",
    "ObjectClaimed",
    "ObjectRecord",
    "Page",
    "ReferenceRecord",
    "VariantRecord",
    "open_metadata_store",
]


def _sqlite(url: str) -> MetadataStore:
    from app.metadata.sqlite import SqliteMetadataStore

    return SqliteMetadataStore(url[len("sqlite:///") :])


def _postgresql(url: str) -> MetadataStore:
    from app.metadata.postgres import PostgresMetadataStore

    return PostgresMetadataStore(url)


BACKENDS: dict[str, Callable[[str], MetadataStore]] = {
    "sqlite": _sqlite,
    "postgresql": _postgresql,
}


def open_metadata_store(settings: Settings) -> MetadataStore:
    url = settings.resolved_database_url
    scheme = url.split(":", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    try:
        factory = BACKENDS[scheme]
    except KeyError:
        raise ValueError(f"no metadata backend for {scheme!r}") from None
    return factory(url)
