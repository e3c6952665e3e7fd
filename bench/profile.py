"""Where the time goes: pyinstrument profiles of the bare pipeline and of an upload, and where
a cold variant's time goes in the real server.

    bench/.work/venv/bin/python -m bench.profile [--repeat 5]

Prints, for each cold variant of figure 1 and for a new and a duplicate 10 MB upload (figure 3,
in-process through the Flask app), the share of time in decode, resize, encode and the rest;
then, for each cold variant served by gunicorn (one worker, the shipped config), the client's
time split by the server's own metrics into the transform job (reading and hashing the
original, then rendering), the app around it, and what lies outside the app (gunicorn, the
socket). The evidence behind the targets a codec bound keeps out of reach.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

from pyinstrument import Profiler

from bench import servers
from bench.figures import COLD_SPECS, get_ok, upload, with_jpeg_comment
from bench.images import Inputs

# Frames whose time is the codec's own work (C code below these Python calls).
BUCKETS = {
    "decode": ("ImageFile.load", "JpegImageFile.load", "ImagingDecoder.decode"),
    "resize": ("Image.resize", "Image.reduce", "_resize_bands", "Future.result"),
    "encode": ("Image.save", "_save", "WebPEncode", "ImagingEncoder.encode_to_file"),
}


def shares(profiler: Profiler) -> dict[str, float]:
    """Seconds in each bucket, exclusive: a decode that runs inside a resize (Pillow decodes
    lazily) counts as decode, not resize."""
    session = profiler.last_session
    assert session is not None
    root = session.root_frame()
    totals = {name: 0.0 for name in BUCKETS}

    def bucket_of(frame) -> str | None:  # type: ignore[no-untyped-def]
        name = frame.function or ""
        qual = f"{frame.class_name}.{name}" if getattr(frame, "class_name", None) else name
        for bucket, names in BUCKETS.items():
            if qual in names or name in names:
                return bucket
        return None

    def walk(frame, active: str | None) -> None:  # type: ignore[no-untyped-def]
        bucket = bucket_of(frame)
        if bucket is not None and bucket != active:
            totals[bucket] += frame.time
            if active is not None:
                totals[active] -= frame.time
            active = bucket
        for child in frame.children:
            walk(child, active)

    if root is not None:
        walk(root, None)
        totals["total"] = root.time
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--full", action="store_true", help="print the whole call trees")
    args = parser.parse_args(argv)

    from app.imaging.pipeline import render
    from app.settings import VariantSpec, load

    inputs = Inputs(servers.WORK / "inputs")
    settings = load(servers.ours_env(servers.WORK / "bare", 0))
    for i, (fmt, quality, width) in enumerate(COLD_SPECS):
        src = inputs.cold_photo(7000 + i)
        spec = VariantSpec(fmt, quality, width)
        render(src, spec, settings)
        profiler = Profiler(interval=0.0005)
        profiler.start()
        for _ in range(args.repeat):
            render(src, spec, settings)
        profiler.stop()
        report(f"render 12 MP -> {fmt}/{quality}/{width}", profiler, args)

    from app import create_app

    data_dir = servers.WORK / "profile-upload"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    app = create_app(load(servers.ours_env(data_dir, 0)))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {servers.API_KEY}"}
    data = inputs.bytes(inputs.UPLOAD_10MB)
    for label, duplicate in (("new", False), ("duplicate", True)):
        profiler = Profiler(interval=0.0005)
        for run in range(args.repeat):
            body = with_jpeg_comment(data, 8000 + run)
            if duplicate:
                client.post("/v1/images", data=body, headers=headers)
            profiler.start()
            r = client.post("/v1/images", data=body, headers=headers)
            profiler.stop()
            assert r.status_code == 201, r.json
        report(f"upload {len(data) / 1e6:.1f} MB JPEG, {label} (in-process)", profiler, args)
    shutil.rmtree(data_dir, ignore_errors=True)
    decode_check(inputs, settings, args.repeat)
    served(inputs, args.repeat)
    return 0


def decode_check(inputs: Inputs, settings, repeat: int) -> None:  # type: ignore[no-untyped-def]
    """The decode check of a new upload on its own, both ways: by the markers (what a baseline
    JPEG gets; it runs inside the blob write, during the fsync) and by the draft decode (what
    any other file gets, on a second thread), each out of the profiler's sight."""
    import importlib

    probe_module = importlib.import_module("app.imaging.probe")
    path = str(inputs.path(inputs.UPLOAD_10MB))

    def median_ms(decode: bool) -> float:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            probe_module.probe(path, settings, decode=decode)
            times.append(time.perf_counter() - started)
        return sorted(times)[len(times) // 2] * 1000

    header, by_markers = median_ms(False), median_ms(True)
    markers = probe_module._markers_known_sound
    probe_module._markers_known_sound = lambda im: False
    try:
        by_decode = median_ms(True)
    finally:
        probe_module._markers_known_sound = markers
    print(
        f"upload decode check, {inputs.path(inputs.UPLOAD_10MB).stat().st_size / 1e6:.1f} MB "
        f"JPEG: by its markers {by_markers - header:.1f} ms, by the draft decode "
        f"{by_decode - header:.1f} ms (probe, header only: {header:.1f} ms)"
    )


def served(inputs: Inputs, repeat: int) -> None:
    """Cold variants through gunicorn: client time = outside the app + app around the
    transform + transform job, the last two from the server's own histograms."""
    with servers.ours("profile-served", GUNICORN_WORKERS="1") as ours:
        for i, (fmt, quality, width) in enumerate(COLD_SPECS):
            digests = [
                upload(ours.base, inputs.cold_photo(9000 + 100 * i + run))["hash"]
                for run in range(repeat)
            ]
            time.sleep(0.5)
            before = _histogram_sums(ours.base, fmt)
            client = 0.0
            for digest in digests:
                client += get_ok(f"{ours.base}/{digest}/{fmt}/{quality}/{width}").seconds
                time.sleep(0.2)  # the variant is stored after the answer: let that finish
            after = _histogram_sums(ours.base, fmt)
            request, transform = (after[k] - before[k] for k in ("request", "transform"))
            n = repeat / 1000  # seconds summed over ``repeat`` calls -> ms per call
            print(
                f"served 12 MP -> {fmt}/{quality}/{width}: {client / n:.1f} ms per request = "
                f"outside the app {(client - request) / n:.1f} + app around the transform "
                f"{(request - transform) / n:.1f} + transform job {transform / n:.1f} "
                "(read and hash the original, render)"
            )


def _histogram_sums(base: str, fmt: str) -> dict[str, float]:
    """Seconds summed so far by the variant route and by transforms of ``fmt``."""
    from prometheus_client.parser import text_string_to_metric_families

    sums = {"request": 0.0, "transform": 0.0}
    text = get_ok(f"{base}/metrics").body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "image_origin_request_seconds_sum" and sample.labels.get(
                "route", ""
            ).endswith("/<width>"):
                sums["request"] += sample.value
            elif (
                sample.name == "image_origin_transform_seconds_sum"
                and sample.labels.get("format") == fmt
            ):
                sums["transform"] += sample.value
    return sums


def report(label: str, profiler: Profiler, args: argparse.Namespace) -> None:
    s = shares(profiler)
    total = s.pop("total", 0.0) or 1e-9
    parts = ", ".join(f"{k} {v / total:.0%}" for k, v in s.items())
    rest = max(0.0, 1 - sum(s.values()) / total)
    per = total / args.repeat * 1000
    print(f"{label}: {per:.1f} ms per call; {parts}, other {rest:.0%}")
    if args.full:
        print(profiler.output_text(unicode=False, color=False))


if __name__ == "__main__":
    sys.exit(main())
