"""Prometheus metrics, one module so every counter has one name and one meaning.

Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` is set by config/gunicorn.conf.py before any
worker imports this, so prometheus-client aggregates every worker's samples at ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("image_origin_requests_total", "HTTP requests", ["route", "method", "status"])
REQUEST_SECONDS = Histogram(
    "image_origin_request_seconds",
    "HTTP request latency",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BYTES_INGESTED = Counter("image_origin_ingested_bytes_total", "Bytes of new content stored")
UPLOADS = Counter("image_origin_uploads_total", "Accepted uploads", ["deduplicated"])
INTEGRITY_FAILURES = Counter(
    "image_origin_integrity_failures_total", "Originals whose bytes did not match their hash"
)
CACHE_LOOKUPS = Counter(
    "image_origin_variant_lookups_total", "Variant lookups by the tier that answered", ["tier"]
)
FAST_HITS = Counter(
    "image_origin_fast_hits_total", "Cache hits answered before Flask (app/http/cached_hits.py)"
)
CACHE_ERRORS = Counter("image_origin_cache_errors_total", "Cache backend failures", ["op"])
TRANSFORMS = Counter("image_origin_transforms_total", "Variants computed", ["format"])
TRANSFORM_SECONDS = Histogram(
    "image_origin_transform_seconds",
    "Time to compute a variant",
    ["format"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
)
SINGLE_FLIGHT_WAITS = Counter(
    "image_origin_single_flight_waits_total", "Requests that waited for another's transform"
)
TRANSFORM_REJECTED = Counter(
    "image_origin_transform_rejected_total", "Transforms refused (busy or timed out)", ["reason"]
)
JOBS = Counter("image_origin_jobs_total", "Background jobs", ["name", "outcome"])
JOB_QUEUE_DEPTH = Gauge("image_origin_job_queue_depth", "Jobs waiting", multiprocess_mode="livemax")
GC_OBJECTS = Counter("image_origin_gc_objects_total", "Objects collected by gc", ["outcome"])
RECONCILE_FIXES = Counter("image_origin_reconcile_total", "Reconcile findings", ["kind"])
TIER_MOVES = Counter("image_origin_tier_moves_total", "Objects moved between tiers", ["to"])
ACCESS_WRITES = Counter("image_origin_access_writes_total", "last_accessed_at writes (throttled)")
