"""Measuring: timed HTTP requests, SSIM against a float reference, peak RSS, load generation."""

from __future__ import annotations

import http.client
import io
import re
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
from PIL import Image


# --- HTTP ----------------------------------------------------------------------------------------
@dataclass
class Timed:
    status: int
    seconds: float
    body: bytes
    headers: dict[str, str]


def request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> Timed:
    """One request on a fresh connection, timed from connect to the last body byte."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    started = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        elapsed = time.perf_counter() - started
        return Timed(resp.status, elapsed, data, {k.lower(): v for k, v in resp.getheaders()})
    finally:
        conn.close()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- SSIM ----------------------------------------------------------------------------------------
def luma(im: Image.Image) -> np.ndarray:
    """Rec. 601 luma as float64 (the Y of JPEG, WebP and most AVIF encoders)."""
    rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def reference(source: bytes, size: tuple[int, int], background=(255, 255, 255)) -> np.ndarray:
    """The source decoded fully (no draft) and resized in float with Lanczos, per channel.

    Transparent sources are composited on ``background`` first (what the JPEG outputs show; the
    WebP/AVIF outputs are composited the same way before comparison).
    """
    im = Image.open(io.BytesIO(source))
    im.load()
    im = flatten(im, background)
    channels = []
    for band in im.split():
        f = band.convert("F")
        channels.append(np.asarray(f.resize(size, Image.Resampling.LANCZOS), dtype=np.float64))
    r, g, b = channels
    return np.clip(r * 0.299 + g * 0.587 + b * 0.114, 0, 255)


def flatten(im: Image.Image, background=(255, 255, 255)) -> Image.Image:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", rgba.size, background)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return im.convert("RGB")


def _gauss_kernel(sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(x * x) / (2 * sigma * sigma))
    return k / k.sum()


def _blur(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable 'valid' convolution with kernel ``k`` along both axes."""
    n = len(k)
    rows = sum(k[i] * a[:, i : a.shape[1] - n + 1 + i] for i in range(n))
    return sum(k[i] * rows[i : rows.shape[0] - n + 1 + i, :] for i in range(n))


def ssim(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03, L 255)."""
    if ref.shape != test.shape:
        return float("nan")
    k = _gauss_kernel()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = _blur(ref, k), _blur(test, k)
    xx, yy, xy = _blur(ref * ref, k), _blur(test * test, k), _blur(ref * test, k)
    sx, sy, sxy = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sx + sy + c2)
    return float(np.mean(num / den))


def ssim_of(output: bytes, ref: np.ndarray, background=(255, 255, 255)) -> float:
    try:
        im = Image.open(io.BytesIO(output))
        im.load()
    except Exception:
        return float("nan")
    test = flatten(im, background)
    return ssim(ref, luma(test))


# --- memory --------------------------------------------------------------------------------------
def rss_kb(pid: int, field: str = "VmRSS") -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakRss:
    """Polls VmRSS of some processes every ``interval`` s; ``peak_kb`` is the largest single one
    seen (the serving process's peak), also checked against VmHWM where the kernel has it."""

    def __init__(self, pids: list[int], interval: float = 0.002) -> None:
        self.pids = pids
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self.base_kb = max((rss_kb(p) for p in self.pids), default=0)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                self.peak_kb = max(self.peak_kb, rss_kb(pid))
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for pid in self.pids:
            self.peak_kb = max(self.peak_kb, rss_kb(pid))


# --- load ----------------------------------------------------------------------------------------
WRK_RPS = re.compile(r"Requests/sec:\s+([0-9.]+)")
WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")


def wrk_path() -> str | None:
    return shutil.which("wrk")


def load(url: str, seconds: float, connections: int = 16, threads: int = 2) -> float:
    """Requests per second for GETs of ``url`` on ``connections`` keep-alive connections."""
    wrk = wrk_path()
    if wrk is not None:
        out = subprocess.run(
            [
                wrk,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        bad = WRK_NON2XX.search(out)
        if bad and int(bad.group(1)) > 0:
            raise RuntimeError(f"wrk saw {bad.group(1)} non-2xx answers from {url}")
        match = WRK_RPS.search(out)
        if not match:
            raise RuntimeError(f"cannot read wrk output:\n{out}")
        return float(match.group(1))
    return _python_load(url, seconds, connections)


def _python_load(url: str, seconds: float, connections: int) -> float:
    """Fallback when wrk is missing: keep-alive clients on threads (slower than wrk)."""
    parts = urlsplit(url)
    deadline = time.perf_counter() + seconds
    counts = [0] * connections
    errors: list[str] = []

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        while time.perf_counter() < deadline:
            conn.request("GET", parts.path)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                errors.append(str(resp.status))
                return
            counts[i] += 1
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"load saw non-200 answers: {errors[:3]}")
    return sum(counts) / (time.perf_counter() - started)
