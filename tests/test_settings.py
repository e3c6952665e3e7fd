"""Settings: defaults, config file, environment precedence, one-line errors naming the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import SettingsError, VariantSpec, load

INVALID = [
    ("IMAGE_ORIGIN_MAX_PIXELS", "lots"),
    ("IMAGE_ORIGIN_MAX_UPLOAD_BYTES", "-1"),
    ("IMAGE_ORIGIN_WIDTHS", "160,abc"),
    ("IMAGE_ORIGIN_WIDTHS", "0"),
    ("IMAGE_ORIGIN_API_KEYS", "nokey"),
    ("IMAGE_ORIGIN_API_KEYS", "alice:short"),
    ("IMAGE_ORIGIN_API_KEYS", "alice:longenoughkey:root"),
    ("IMAGE_ORIGIN_SIGNING_KEYS", "tooshort"),
    ("IMAGE_ORIGIN_DATABASE_URL", "mysql://x"),
    ("IMAGE_ORIGIN_STORAGE_URL", "ftp://x"),
    ("IMAGE_ORIGIN_STORAGE_URL", "s3://A_B"),
    ("IMAGE_ORIGIN_REDIS_URL", "http://x"),
    ("IMAGE_ORIGIN_PREGENERATE", "webp/high/123"),
    ("IMAGE_ORIGIN_PREGENERATE", "gif/high"),
    ("IMAGE_ORIGIN_PRESETS", "{not json"),
    ("IMAGE_ORIGIN_PRESETS", '{"high": {"jpeg": {"quality": 500}}}'),
    ("IMAGE_ORIGIN_TIER_AFTER_DAYS", "nan"),
    ("IMAGE_ORIGIN_JPEG_BACKGROUND", "white"),
    ("IMAGE_ORIGIN_LOG_LEVEL", "LOUD"),
    ("IMAGE_ORIGIN_CDN_BASE_URL", "cdn.example.com"),
]


def test_defaults():
    s = load({})
    assert s.bind == "127.0.0.1:8080" and s.data_dir == "./var"
    assert s.max_upload_bytes == 25 * 1024 * 1024 and s.max_pixels == 50_000_000
    assert s.widths == (160, 320, 480, 640, 960, 1280, 1920, 2560)
    assert s.max_output_side == 4096 and s.gc_grace_seconds == 86400
    assert s.tier_after_days == 90 and s.cold_storage_class == "GLACIER_IR"
    assert VariantSpec("webp", "high", 640) in s.pregenerate
    assert s.resolved_database_url.startswith("sqlite:///")
    assert s.resolved_storage_url.startswith("file://")


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_invalid_values_name_the_variable(name, value):
    with pytest.raises(SettingsError) as info:
        load({name: value})
    message = str(info.value)
    assert message.startswith(name + ":") and "\n" not in message


def test_config_file_then_environment_wins(tmp_path: Path):
    conf = tmp_path / "image-origin.toml"
    conf.write_text(
        "max_pixels = 1000\nwidths = [100, 200]\nGC_GRACE_SECONDS = 120\n"
        "[presets.thumb]\njpeg = {quality = 50}\nwebp = {quality = 45, method = 3}\n"
        "avif = {quality = 30, speed = 9}\n"
    )
    s = load({"IMAGE_ORIGIN_CONFIG": str(conf), "IMAGE_ORIGIN_MAX_PIXELS": "2000"})
    assert s.max_pixels == 2000  # the environment wins
    assert s.widths == (100, 200) and s.gc_grace_seconds == 120
    assert s.presets["thumb"]["webp"] == {"quality": 45, "method": 3}
    assert s.presets["high"]["jpeg"]["quality"] == 85  # built-ins kept
    conf.write_text("no_such_setting = 1\n")
    with pytest.raises(SettingsError, match="IMAGE_ORIGIN_CONFIG: unknown setting"):
        load({"IMAGE_ORIGIN_CONFIG": str(conf)})


def test_empty_pregenerate_means_none():
    assert load({"IMAGE_ORIGIN_PREGENERATE": ""}).pregenerate == ()


def test_secrets_are_not_in_repr():
    s = load(
        {"IMAGE_ORIGIN_API_KEYS": "alice:supersecretkey1", "IMAGE_ORIGIN_SIGNING_KEYS": "s" * 20}
    )
    assert "supersecretkey1" not in repr(s) and "s" * 20 not in repr(s)


def test_cli_start_up_error_is_one_line(tmp_path: Path):
    cli = Path(sys.executable).parent / "image-origin"
    result = subprocess.run(
        [str(cli), "migrate"],
        env={
            "IMAGE_ORIGIN_DATA_DIR": str(tmp_path),
            "IMAGE_ORIGIN_MAX_PIXELS": "lots",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["Error: IMAGE_ORIGIN_MAX_PIXELS: expected an integer, got 'lots'"]
