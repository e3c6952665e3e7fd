"""`make bench`: image-origin against thumbor and the bare codec, side by side, in one run.

    python -m bench.run [--only 1,2,3] [--runs 5] [--seconds 4] [--update-readme]

Writes bench/results.json (a list of {name, ours, peer, unit, ratio, target, met, ...}) and
bench/results.md, and prints the table. Inputs are generated (bench/images.py); thumbor is
installed into bench/.peer/venv; every server runs on a free loopback port under bench/.work/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench import measure, servers
from bench.figures import Row

RESULTS_JSON = servers.BENCH / "results.json"
RESULTS_MD = servers.BENCH / "results.md"
README = servers.ROOT / "README.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="image-origin benchmarks")
    parser.add_argument("--only", default="1,2,3,4,5,6", help="figures to run, e.g. 1,4")
    parser.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", 7)))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=4.0, help="per load-generator run")
    parser.add_argument("--objects", type=int, default=100_000, help="figure 6 object count")
    parser.add_argument("--update-readme", action="store_true", help="rewrite README's table")
    args = parser.parse_args(argv)
    only = {int(x) for x in args.only.split(",") if x.strip()}
    started = time.monotonic()

    from app.settings import load
    from bench.images import Inputs

    servers.WORK.mkdir(parents=True, exist_ok=True)
    inputs = Inputs(servers.WORK / "inputs")
    settings = load(servers.ours_env(servers.WORK / "bare", 0))
    rows: list[Row] = []

    def section(label: str, fn) -> None:  # type: ignore[no-untyped-def]
        print(f"[bench] {label} ...", flush=True)
        t0 = time.monotonic()
        try:
            rows.extend(fn())
        except Exception as exc:
            traceback.print_exc()
            rows.append(Row(label, None, None, "", "", met=False, note=f"failed: {exc!r}"[:300]))
        print(f"[bench] {label}: {time.monotonic() - t0:.0f} s", flush=True)

    if only & {2} and measure.wrk_path() is None:
        servers.ensure_apt("wrk", "wrk")  # else a Python load generator stands in
    load_before = wait_for_quiet()
    peer_problem = servers.install_thumbor() if only & {1, 2, 4} else None
    if peer_problem:
        print(f"[bench] thumbor unavailable: {peer_problem}", flush=True)
    print("[bench] inputs ...", flush=True)
    for name in (
        inputs.PHOTO_12MP,
        inputs.HUGE_93MP,
        inputs.UPLOAD_10MB,
        inputs.PNG_ALPHA,
        inputs.GIF,
    ):
        inputs.path(name)

    from bench import figures

    cached: dict = {}
    if only & {1, 2, 3, 5}:
        with servers.ours("main") as ours:
            if only & {1, 2} and not peer_problem:
                with servers.thumbor("main") as thumbor:
                    if 1 in only:
                        section(
                            "figure 1",
                            lambda: figures.cold_variants(
                                inputs, ours, thumbor, settings, args.runs, args.warmup
                            ),
                        )
                        section(
                            "figure 1 (other sources)",
                            lambda: figures.other_sources(
                                inputs, ours, thumbor, settings, args.runs, args.warmup
                            ),
                        )
                    if 2 in only:

                        def fig2():  # type: ignore[no-untyped-def]
                            out, info = figures.cached_throughput(
                                inputs,
                                ours,
                                thumbor,
                                settings,
                                args.runs,
                                args.warmup,
                                args.seconds,
                            )
                            cached.update(info)
                            return out

                        section("figure 2", fig2)
            if 2 in only and not peer_problem and cached:
                section(
                    "figure 2 (nginx)",
                    lambda: figures.nginx_throughput(
                        ours, cached, args.runs, args.warmup, args.seconds
                    ),
                )
            if 3 in only:
                section("figure 3", lambda: figures.uploads(inputs, ours, args.runs, args.warmup))
            if 5 in only:
                section("figure 5", lambda: figures.single_flight(inputs, ours))
    if 4 in only and not peer_problem:
        section("figure 4", lambda: figures.peak_rss(inputs, settings, args.runs))
    if 6 in only:
        from bench import ops

        section("figure 6", lambda: ops.operations(args.objects))

    elapsed = time.monotonic() - started
    write(
        rows, elapsed, args, f"{load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    )
    if args.update_readme:
        update_readme(RESULTS_MD.read_text())
    print(RESULTS_MD.read_text())
    return 0


def wait_for_quiet(threshold: float = 0.7, limit: float = 120.0) -> float:
    """Wait (bounded) for the 1-minute load average to drop: other work on a 2-core machine
    shows up in every figure. Returns the load average the run starts with."""
    deadline = time.monotonic() + limit
    while os.getloadavg()[0] > threshold and time.monotonic() < deadline:
        print(
            f"[bench] load average {os.getloadavg()[0]:.2f}; waiting for a quieter machine",
            flush=True,
        )
        time.sleep(10)
    return os.getloadavg()[0]


# --- report ------------------------------------------------------------------------------------
def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit in ("ms", "MB", "MB/s") or abs(value) < 100:
        text = (
            f"{value:.3g}"
            if abs(value) < 10
            else f"{value:.1f}"
            if abs(value) < 100
            else f"{value:.0f}"
        )
    else:
        text = f"{value:,.0f}"
    return text


def environment() -> dict[str, str]:
    import PIL

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    peer_pillow = "n/a"
    py = servers.PEER / "venv" / "bin" / "python"
    if py.exists():
        peer_pillow = subprocess.run(
            [str(py), "-c", "import PIL; print(PIL.__version__)"], capture_output=True, text=True
        ).stdout.strip()
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "thumbor": f"{servers.THUMBOR_VERSION} (Pillow {peer_pillow})",
        "workers": f"{servers.WORKERS} gunicorn workers x 4 threads; "
        f"thumbor --processes {servers.WORKERS}",
    }


def table(rows: list[Row]) -> str:
    lines = [
        "| figure | ours | peer | ratio | target | met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        peer = (
            f"{fmt(r.peer, r.unit)} {r.unit} ({r.peer_name})"
            if r.peer is not None
            else (r.peer_name or "-")
        )
        ours = f"{fmt(r.ours, r.unit)} {r.unit}" if r.ours is not None else "n/a"
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        met = {True: "yes", False: "**no**", None: "-"}[r.met]
        note = (
            f" ({r.note})"
            if r.note and (r.ours is None or r.met is False or "n/a" in r.note)
            else ""
        )
        lines.append(
            f"| {r.name}{note} | {ours} | {peer} | {ratio} | {r.target or 'info'} | {met} |"
        )
    return "\n".join(lines)


def quality_table(rows: list[Row]) -> str:
    lines = [
        "| cold variant | ours bytes | ours SSIM | thumbor bytes | thumbor SSIM | bare bytes "
        "| bare SSIM |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    seen = set()
    for r in rows:
        q = r.detail.get("quality")
        label = r.name.split("->", 1)[-1].split(",")[0].strip()
        if not q or label in seen:
            continue
        seen.add(label)
        cells = []
        for side in ("ours", "thumbor", "bare"):
            cells += [f"{q[side]['bytes']:,}", f"{q[side]['ssim']:.4f}"]
        lines.append(
            f"| {label} ({q['ours']['size'][0]}x{q['ours']['size'][1]}) | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def write(rows: list[Row], elapsed: float, args: argparse.Namespace, load: str) -> None:
    env = environment()
    RESULTS_JSON.write_text(
        json.dumps([dataclasses.asdict(r) for r in rows], indent=2, default=str) + "\n"
    )
    met = sum(1 for r in rows if r.met is True)
    judged = sum(1 for r in rows if r.met is not None)
    parts = [
        table(rows),
        "",
        f"Targets met: {met} of {judged}. Medians of {args.runs} runs after {args.warmup} "
        f"warm-up, servers alternated run by run; {elapsed / 60:.1f} min in all.",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in env.items()) + f"; load average {load}.",
    ]
    qt = quality_table(rows)
    if qt:
        parts += [
            "",
            "Output size and SSIM (luma, against the source decoded in full and resized "
            "in float with Lanczos), last counted run:",
            "",
            qt,
        ]
    RESULTS_MD.write_text("\n".join(parts) + "\n")


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def update_readme(md: str) -> None:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print("[bench] README has no bench markers; not updated", file=sys.stderr)
        return
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    README.write_text(pattern.sub(lambda _m: f"{BEGIN}\n{md}{END}", text, count=1))


if __name__ == "__main__":
    sys.exit(main())
