"""Imaging: pure functions over bytes, files and settings; no HTTP, storage or database.

- :func:`sniff` / :func:`sniff_file`: allowed type by magic bytes (415 otherwise).
- :func:`probe`: type, displayed size and frames of an upload, limits enforced before decoding.
- :func:`parse_variant` / :func:`negotiate`: URL parts and ``Accept`` -> a VariantSpec.
- :func:`render`: a variant's bytes from an original.
"""

from app.imaging.encoders import avif_available
from app.imaging.formats import REGISTRY, SourceFormat, sniff, sniff_file
from app.imaging.pipeline import Rendered, render
from app.imaging.probe import ProbeResult, probe
from app.imaging.variants import (
    CONTENT_TYPES,
    EXTENSIONS,
    PIPELINE_VERSION,
    negotiate,
    parse_variant,
)

__all__ = [
    "CONTENT_TYPES",
    "EXTENSIONS",
    "PIPELINE_VERSION",
    "REGISTRY",
    "ProbeResult",
    "Rendered",
    "SourceFormat",
    "avif_available",
    "negotiate",
    "parse_variant",
    "probe",
    "render",
    "sniff",
    "sniff_file",
]
