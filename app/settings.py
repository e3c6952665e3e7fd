"""Every setting in one frozen, validated object.

Defaults, then an optional TOML config file (``IMAGE_ORIGIN_CONFIG``), then ``IMAGE_ORIGIN_*``
environment variables; the environment wins. This is the only module that reads ``os.environ``
for settings, so a bad value stops start-up here, with one line naming the variable.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

PREFIX = "IMAGE_ORIGIN_"
FORMATS = ("jpeg", "webp", "avif")
DEFAULT_WIDTHS = (160, 320, 480, 640, 960, 1280, 1920, 2560)
DEFAULT_PREGENERATE = "webp/high/640,webp/high/1280,avif/high/640,jpeg/high/1280"
MIB = 1024 * 1024

# Encoder settings per preset and format: ``quality`` (1-100) and the effort, WebP's ``method``
# (0-6, higher is slower and smaller), AVIF's ``speed`` (0-10, higher is faster and larger) and
# JPEG's ``progressive`` (0 or 1). WebP and AVIF favour a fast first response, since most variants
# are made on demand while someone waits: measured on a 12 MP photo -> 1280 (README,
# "Benchmarks"), WebP method 2 instead of 4 encodes in about 0.7x the time for +7% bytes, AVIF
# speed 9 instead of 8 in about 0.3x for +15%. JPEG stays progressive (smaller, and it renders
# early on slow links, which is why it is the web's default) although a baseline JPEG encodes in
# about 0.4x the time for +2.4%: a deployment that wants that trade sets "progressive": 0.
DEFAULT_PRESETS: dict[str, dict[str, dict[str, int]]] = {
    "high": {
        "jpeg": {"quality": 85, "progressive": 1},
        "webp": {"quality": 82, "method": 2},
        "avif": {"quality": 60, "speed": 9},
    },
    "low": {
        "jpeg": {"quality": 60, "progressive": 1},
        "webp": {"quality": 55, "method": 2},
        "avif": {"quality": 40, "speed": 9},
    },
}
PRESET_NAME_RE = re.compile(r"^[a-z0-9_-]{1,32}$")
ENCODER_KEYS = {
    "jpeg": {"quality", "progressive"},
    "webp": {"quality", "method"},
    "avif": {"quality", "speed"},
}
# libwebp refuses a method outside 0..6 at encode time (every WebP would fail); AVIF's speed;
# progressive is a flag (TOML's true/false are accepted as 1/0).
ENCODER_RANGES = {"method": (0, 6), "speed": (0, 10), "progressive": (0, 1)}
# Upper bound of the wait settings: a larger value overflows the thread-wait primitives, and no
# request should wait longer than gunicorn's worker timeout anyway.
MAX_WAIT_SECONDS = 3600


class SettingsError(ValueError):
    """An invalid setting; the message names the variable and is one line."""


@dataclass(frozen=True)
class ApiKey:
    owner: str
    key: str
    admin: bool = False

    def __repr__(self) -> str:  # never print secrets
        return f"ApiKey(owner={self.owner!r}, admin={self.admin})"


@dataclass(frozen=True)
class VariantSpec:
    """A variant named by URL parts: format, quality preset and optional width."""

    format: str
    quality: str
    width: int | None = None

    @property
    def path(self) -> str:
        tail = f"/{self.width}" if self.width is not None else ""
        return f"{self.format}/{self.quality}{tail}"


@dataclass(frozen=True)
class Settings:
    bind: str = "127.0.0.1:8080"
    data_dir: str = "./var"
    database_url: str = ""  # empty: sqlite under data_dir
    storage_url: str = ""  # empty: file:// under data_dir
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    redis_url: str | None = None
    api_keys: tuple[ApiKey, ...] = field(default=(), repr=False)
    signing_keys: tuple[str, ...] = field(default=(), repr=False)
    cdn_base_url: str | None = None
    max_upload_bytes: int = 25 * MIB
    max_pixels: int = 50_000_000
    max_frames: int = 500
    gc_grace_seconds: int = 86400
    gc_lease_seconds: int = 300
    tier_after_days: float = 90.0
    cold_storage_class: str = "GLACIER_IR"
    cold_dir: str = ""  # empty: <data_dir>/cold
    pregenerate: tuple[VariantSpec, ...] = ()
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    max_output_side: int = 4096
    presets: Mapping[str, Mapping[str, Mapping[str, int]]] = field(
        default_factory=lambda: DEFAULT_PRESETS
    )
    jpeg_background: tuple[int, int, int] = (255, 255, 255)
    access_interval_seconds: int = 3600
    cache_memory_bytes: int = 64 * MIB
    cache_item_max_bytes: int = 4 * MIB
    cache_ttl_seconds: int = 7 * 86400
    transform_concurrency: int = 2
    transform_timeout_seconds: float = 30.0
    lock_timeout_seconds: float = 30.0
    signed_url_max_seconds: int = 7 * 86400
    trusted_proxies: int = 0
    log_level: str = "INFO"

    # --- derived ---------------------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_path / 'metadata.db').resolve()}"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{(self.data_path / 'blobs').resolve()}"

    @property
    def staging_dir(self) -> Path:
        return self.data_path / "staging"

    @property
    def resolved_cold_dir(self) -> Path:
        return Path(self.cold_dir) if self.cold_dir else self.data_path / "cold"

    def admin_keys(self) -> tuple[ApiKey, ...]:
        return tuple(k for k in self.api_keys if k.admin)

    def with_overrides(self, **changes: Any) -> Settings:
        new = replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        """Cross-field checks; each failure names the variable."""
        _check(self.max_upload_bytes > 0, "MAX_UPLOAD_BYTES", "must be positive")
        _check(self.max_pixels > 0, "MAX_PIXELS", "must be positive")
        _check(self.max_frames > 0, "MAX_FRAMES", "must be positive")
        _check(self.gc_grace_seconds >= 0, "GC_GRACE_SECONDS", "must be >= 0")
        _check(self.gc_lease_seconds > 0, "GC_LEASE_SECONDS", "must be positive")
        _check(self.tier_after_days >= 0, "TIER_AFTER_DAYS", "must be >= 0")
        _check(self.max_output_side > 0, "MAX_OUTPUT_SIDE", "must be positive")
        _check(self.transform_concurrency > 0, "TRANSFORM_CONCURRENCY", "must be positive")
        _check(
            0 < self.transform_timeout_seconds <= MAX_WAIT_SECONDS,
            "TRANSFORM_TIMEOUT_SECONDS",
            f"must be at most {MAX_WAIT_SECONDS}",
        )
        _check(
            0 < self.lock_timeout_seconds <= MAX_WAIT_SECONDS,
            "LOCK_TIMEOUT_SECONDS",
            f"must be positive and at most {MAX_WAIT_SECONDS}",
        )
        _check(self.cache_ttl_seconds > 0, "CACHE_TTL_SECONDS", "must be positive")
        _check(self.cache_memory_bytes >= 0, "CACHE_MEMORY_BYTES", "must be >= 0")
        _check(self.cache_item_max_bytes >= 0, "CACHE_ITEM_MAX_BYTES", "must be >= 0")
        _check(self.signed_url_max_seconds > 0, "SIGNED_URL_MAX_SECONDS", "must be positive")
        _check(self.access_interval_seconds >= 0, "ACCESS_INTERVAL_SECONDS", "must be >= 0")
        _check(self.trusted_proxies >= 0, "TRUSTED_PROXIES", "must be >= 0")
        _check(len(self.widths) > 0, "WIDTHS", "must list at least one width")
        for w in self.widths:
            _check(0 < w <= 16384, "WIDTHS", f"width {w} out of range 1..16384")
        _check("high" in self.presets and "low" in self.presets, "PRESETS", "needs high and low")
        for name, per_format in self.presets.items():
            _check(bool(PRESET_NAME_RE.match(name)), "PRESETS", f"bad preset name {name!r}")
            for fmt in FORMATS:
                _check(fmt in per_format, "PRESETS", f"preset {name!r} lacks {fmt}")
            for fmt, enc in per_format.items():
                _check(fmt in FORMATS, "PRESETS", f"unknown format {fmt!r}")
                _check(set(enc) <= ENCODER_KEYS[fmt], "PRESETS", f"unknown keys for {fmt}")
                q = enc.get("quality")
                _check(isinstance(q, int) and 1 <= q <= 100, "PRESETS", "quality 1..100")
                for option, (lo, hi) in ENCODER_RANGES.items():
                    if option in enc:
                        _check(lo <= enc[option] <= hi, "PRESETS", f"{fmt} {option} {lo}..{hi}")
        for spec in self.pregenerate:
            _check(spec.format in FORMATS, "PREGENERATE", f"unknown format {spec.format!r}")
            _check(spec.quality in self.presets, "PREGENERATE", f"unknown preset {spec.quality!r}")
            _check(
                spec.width is None or spec.width in self.widths,
                "PREGENERATE",
                f"width {spec.width} is not in WIDTHS",
            )
        db = self.resolved_database_url
        _check(
            db.startswith(("sqlite:///", "postgresql://", "postgres://")),
            "DATABASE_URL",
            "must be sqlite:///path or postgresql://...",
        )
        st = self.resolved_storage_url
        _check(st.startswith(("file://", "s3://")), "STORAGE_URL", "must be file:// or s3://")
        if st.startswith("s3://"):
            bucket = st[5:].split("/", 1)[0]
            _check(
                bool(re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", bucket)),
                "STORAGE_URL",
                "bucket name must be 3-63 lowercase letters, digits, dots or dashes",
            )
        if self.redis_url:
            _check(
                self.redis_url.startswith(("redis://", "rediss://", "unix://")),
                "REDIS_URL",
                "must be redis://, rediss:// or unix://",
            )
        if self.cdn_base_url:
            _check(
                self.cdn_base_url.startswith(("http://", "https://")),
                "CDN_BASE_URL",
                "must start with http:// or https://",
            )


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise SettingsError(f"{PREFIX}{name}: {message}")


# --- parsers: each takes the raw string and the variable name ---------------------------------
def _int(raw: str, name: str) -> int:
    try:
        return int(raw.strip().replace("_", ""))
    except ValueError:
        raise SettingsError(f"{PREFIX}{name}: expected an integer, got {raw!r}") from None


def _float(raw: str, name: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{PREFIX}{name}: expected a number, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise SettingsError(f"{PREFIX}{name}: expected a finite number, got {raw!r}")
    return value


def _str(raw: str, name: str) -> str:
    return raw.strip()


def _optional_str(raw: str, name: str) -> str | None:
    return raw.strip() or None


def parse_api_keys(raw: str, name: str = "API_KEYS") -> tuple[ApiKey, ...]:
    keys: list[ApiKey] = []
    seen: set[str] = set()
    # Errors name the entry by position, never by content: in a mistyped entry (key:owner) the
    # "owner" is the secret, and start-up errors end up in logs.
    entries = filter(None, (p.strip() for p in raw.split(",")))
    for number, item in enumerate(entries, start=1):
        parts = item.split(":")
        where = f"{PREFIX}{name}: entry {number}"
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise SettingsError(f"{where}: each entry must be owner:key or owner:key:admin")
        if len(parts) == 3 and parts[2] != "admin":
            raise SettingsError(f"{where}: third field may only be 'admin'")
        if len(parts[1]) < 8:
            raise SettingsError(f"{where}: the key is shorter than 8 chars")
        if not re.fullmatch(r"[A-Za-z0-9._@-]{1,64}", parts[0]):
            raise SettingsError(f"{where}: owner must be 1-64 letters, digits or ._@-")
        if parts[1] in seen:
            raise SettingsError(f"{where}: a key is listed twice")
        seen.add(parts[1])
        keys.append(ApiKey(parts[0], parts[1], len(parts) == 3))
    return tuple(keys)


def parse_signing_keys(raw: str, name: str = "SIGNING_KEYS") -> tuple[str, ...]:
    keys = tuple(filter(None, (p.strip() for p in raw.split(","))))
    for k in keys:
        if len(k) < 16:
            raise SettingsError(f"{PREFIX}{name}: every signing key needs at least 16 characters")
    return keys


def parse_widths(raw: str, name: str = "WIDTHS") -> tuple[int, ...]:
    widths = sorted({_int(p, name) for p in raw.split(",") if p.strip()})
    return tuple(widths)


def parse_pregenerate(raw: str, name: str = "PREGENERATE") -> tuple[VariantSpec, ...]:
    specs = []
    for item in filter(None, (p.strip() for p in raw.split(","))):
        parts = item.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise SettingsError(f"{PREFIX}{name}: entries look like webp/high/640, got {item!r}")
        width = _int(parts[2], name) if len(parts) == 3 else None
        specs.append(VariantSpec(parts[0], parts[1], width))
    return tuple(specs)


def parse_presets(raw: str, name: str = "PRESETS") -> dict[str, dict[str, dict[str, int]]]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        raise SettingsError(f"{PREFIX}{name}: expected JSON") from None
    return _presets_from(value, name)


def _presets_from(value: Any, name: str = "PRESETS") -> dict[str, dict[str, dict[str, int]]]:
    if not isinstance(value, dict):
        raise SettingsError(f"{PREFIX}{name}: expected an object of presets")
    merged: dict[str, dict[str, dict[str, int]]] = {
        k: {f: dict(e) for f, e in v.items()} for k, v in DEFAULT_PRESETS.items()
    }
    for preset, per_format in value.items():
        if not isinstance(per_format, dict):
            raise SettingsError(f"{PREFIX}{name}: preset {preset!r} must be an object")
        target = merged.setdefault(str(preset), {})
        for fmt, enc in per_format.items():
            if not isinstance(enc, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in enc.values()
            ):
                raise SettingsError(f"{PREFIX}{name}: {preset}.{fmt} must map names to integers")
            target.setdefault(str(fmt), {}).update(enc)
    return merged


def parse_color(raw: str, name: str = "JPEG_BACKGROUND") -> tuple[int, int, int]:
    m = re.match(r"^#?([0-9a-fA-F]{6})$", raw.strip())
    if not m:
        raise SettingsError(f"{PREFIX}{name}: expected a colour like #ffffff")
    h = m.group(1)
    return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))


def _log_level(raw: str, name: str) -> str:
    level = raw.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"{PREFIX}{name}: one of DEBUG, INFO, WARNING, ERROR")
    return level


# variable suffix -> (field name, parser)
PARSERS: dict[str, tuple[str, Any]] = {
    "BIND": ("bind", _str),
    "DATA_DIR": ("data_dir", _str),
    "DATABASE_URL": ("database_url", _str),
    "STORAGE_URL": ("storage_url", _str),
    "S3_ENDPOINT_URL": ("s3_endpoint_url", _optional_str),
    "S3_REGION": ("s3_region", _str),
    "REDIS_URL": ("redis_url", _optional_str),
    "API_KEYS": ("api_keys", parse_api_keys),
    "SIGNING_KEYS": ("signing_keys", parse_signing_keys),
    "CDN_BASE_URL": ("cdn_base_url", _optional_str),
    "MAX_UPLOAD_BYTES": ("max_upload_bytes", _int),
    "MAX_PIXELS": ("max_pixels", _int),
    "MAX_FRAMES": ("max_frames", _int),
    "GC_GRACE_SECONDS": ("gc_grace_seconds", _int),
    "GC_LEASE_SECONDS": ("gc_lease_seconds", _int),
    "TIER_AFTER_DAYS": ("tier_after_days", _float),
    "COLD_STORAGE_CLASS": ("cold_storage_class", _str),
    "COLD_DIR": ("cold_dir", _str),
    "PREGENERATE": ("pregenerate", parse_pregenerate),
    "WIDTHS": ("widths", parse_widths),
    "MAX_OUTPUT_SIDE": ("max_output_side", _int),
    "PRESETS": ("presets", parse_presets),
    "JPEG_BACKGROUND": ("jpeg_background", parse_color),
    "ACCESS_INTERVAL_SECONDS": ("access_interval_seconds", _int),
    "CACHE_MEMORY_BYTES": ("cache_memory_bytes", _int),
    "CACHE_ITEM_MAX_BYTES": ("cache_item_max_bytes", _int),
    "CACHE_TTL_SECONDS": ("cache_ttl_seconds", _int),
    "TRANSFORM_CONCURRENCY": ("transform_concurrency", _int),
    "TRANSFORM_TIMEOUT_SECONDS": ("transform_timeout_seconds", _float),
    "LOCK_TIMEOUT_SECONDS": ("lock_timeout_seconds", _float),
    "SIGNED_URL_MAX_SECONDS": ("signed_url_max_seconds", _int),
    "TRUSTED_PROXIES": ("trusted_proxies", _int),
    "LOG_LEVEL": ("log_level", _log_level),
}
FIELD_NAMES = {f.name for f in fields(Settings)}


def _from_config_file(path: str) -> dict[str, Any]:
    """Read a TOML file whose keys are the variable suffixes, lower or upper case."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise SettingsError(f"{PREFIX}CONFIG: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{PREFIX}CONFIG: {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{PREFIX}CONFIG: {path} is not UTF-8 text") from None
    values: dict[str, Any] = {}
    for raw_key, raw_value in data.items():
        suffix = raw_key.upper()
        if suffix not in PARSERS:
            raise SettingsError(f"{PREFIX}CONFIG: unknown setting {raw_key!r} in {path}")
        field_name, parser = PARSERS[suffix]
        if suffix == "PRESETS" and isinstance(raw_value, dict):
            values[field_name] = _presets_from(raw_value, suffix)
        elif isinstance(raw_value, list):
            values[field_name] = parser(",".join(str(v) for v in raw_value), suffix)
        else:
            values[field_name] = parser(str(raw_value), suffix)
    return values


DEV_KEYS_FILE = "dev-keys.toml"


def dev_keys_path(data_dir: str) -> Path:
    return Path(data_dir) / DEV_KEYS_FILE


def _fill_dev_keys(values: dict[str, Any]) -> None:
    """Keys that ``make run`` generated for a fresh machine, used only when none are configured."""
    if values.get("api_keys") and values.get("signing_keys"):
        return
    path = dev_keys_path(values.get("data_dir", Settings.data_dir))
    try:
        if not path.is_file():
            return
    except OSError as exc:  # a name too long, a component that is a file, no permission
        raise SettingsError(f"{PREFIX}DATA_DIR: cannot use it: {exc.strerror}") from None
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{PREFIX}DATA_DIR: cannot read {path}: {exc}") from None
    if not values.get("api_keys") and data.get("api_keys"):
        values["api_keys"] = parse_api_keys(str(data["api_keys"]))
    if not values.get("signing_keys") and data.get("signing_keys"):
        values["signing_keys"] = parse_signing_keys(str(data["signing_keys"]))


def load(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from defaults, config file and environment, then keyword overrides."""
    env = os.environ if environ is None else environ
    default_pregenerate = parse_pregenerate(DEFAULT_PREGENERATE)
    values: dict[str, Any] = {"pregenerate": default_pregenerate}
    config_path = env.get(f"{PREFIX}CONFIG")
    if config_path:
        values.update(_from_config_file(config_path))
    for suffix, (field_name, parser) in PARSERS.items():
        raw = env.get(PREFIX + suffix)
        if raw is not None:
            values[field_name] = parser(raw, suffix)
    _fill_dev_keys(values)
    unknown = set(overrides) - FIELD_NAMES
    if unknown:
        raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
    values.update(overrides)
    if values["pregenerate"] is default_pregenerate:
        # The built-in set follows the configured widths; an explicit list is validated as is.
        widths = values.get("widths", DEFAULT_WIDTHS)
        values["pregenerate"] = tuple(
            spec for spec in default_pregenerate if spec.width is None or spec.width in widths
        )
    settings = Settings(**values)
    settings.validate()
    return settings
