"""Deterministic benchmark inputs, made here (no downloads) and cached under bench/.work/inputs.

Photo-like means what a camera JPEG costs a codec: smooth light, hard edges, fine texture and
sensor noise, so neither the entropy coder nor the resampler gets an easy ride.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

VERSION = 2  # bump when the generators change, so cached inputs are remade


def photo_array(width: int, height: int, seed: int, noise: float = 6.0) -> np.ndarray:
    """A photo-like RGB array: gradients, overlapping shapes with hard edges, texture, noise."""
    rng = np.random.default_rng(seed)
    yy = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xx = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    base = np.empty((height, width, 3), dtype=np.float32)
    base[..., 0] = 90 + 90 * xx + 30 * np.sin(6.0 * yy)
    base[..., 1] = 70 + 100 * yy + 25 * np.cos(5.0 * xx)
    base[..., 2] = 140 - 60 * xx * yy + 20 * np.sin(9.0 * (xx + yy))
    # Shapes with hard edges, drawn on a small-ish canvas then scaled up (nearest keeps edges).
    sw, sh = max(1, width // 4), max(1, height // 4)
    shapes = Image.new("RGB", (sw, sh), (0, 0, 0))
    draw = ImageDraw.Draw(shapes)
    for _ in range(160):
        x0, y0 = int(rng.integers(0, sw)), int(rng.integers(0, sh))
        x1, y1 = x0 + int(rng.integers(8, sw // 5 + 9)), y0 + int(rng.integers(8, sh // 5 + 9))
        colour = tuple(int(c) for c in rng.integers(0, 90, 3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
    for _ in range(60):
        pts = [(int(rng.integers(0, sw)), int(rng.integers(0, sh))) for _ in range(2)]
        draw.line(pts, fill=tuple(int(c) for c in rng.integers(120, 255, 3)), width=2)
    shapes_big = np.asarray(shapes.resize((width, height), Image.Resampling.NEAREST))
    base += shapes_big.astype(np.float32) - 45.0
    # Fine texture (like foliage or fabric) and sensor noise.
    texture = np.sin(xx * width / 7.0) * np.cos(yy * height / 5.0) * 10.0
    base += texture[..., None]
    base += rng.normal(0.0, noise, size=(height, width, 3)).astype(np.float32)
    np.clip(base, 0, 255, out=base)
    return base.astype(np.uint8)


def jpeg_bytes(arr: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_alpha_bytes(seed: int = 3) -> bytes:
    """2000x1500 RGBA PNG: a photo with a soft-edged transparent vignette and a hole."""
    arr = photo_array(2000, 1500, seed, noise=3.0)
    yy, xx = np.mgrid[0:1500, 0:2000].astype(np.float32)
    r = np.hypot((xx - 1000) / 1000, (yy - 750) / 750)
    alpha = np.clip((1.05 - r) * 600, 0, 255)
    alpha[600:900, 800:1200] = 0
    rgba = np.dstack([arr, alpha.astype(np.uint8)])
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def gif_bytes(seed: int = 4, frames: int = 24) -> bytes:
    """640x480 animated GIF, 24 frames of a moving scene, 80 ms each, looping."""
    arr = photo_array(800, 480, seed, noise=2.0)
    images = []
    for i in range(frames):
        frame = Image.fromarray(arr[:, i * 6 : i * 6 + 640].copy(), "RGB")
        images.append(frame.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=0))
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=80, loop=0)
    return buf.getvalue()


def variant_of(data_arr: np.ndarray, run: int, quality: int) -> bytes:
    """The same photo with one pixel changed: new bytes, new hash, every cache cold."""
    arr = data_arr.copy()
    arr[run % arr.shape[0], (run * 7) % arr.shape[1], 0] ^= 0x55
    arr[(run * 13) % arr.shape[0], (run * 3) % arr.shape[1], 1] ^= 0x33
    return jpeg_bytes(arr, quality)


class Inputs:
    """Makes the inputs once and keeps them under ``root`` (bench/.work/inputs)."""

    PHOTO_12MP = "photo-12mp.jpg"
    HUGE_93MP = "huge-93mp.jpg"
    UPLOAD_10MB = "upload-10mb.jpg"
    PNG_ALPHA = "alpha.png"
    GIF = "animated.gif"
    PHOTO_QUALITY = 88

    def __init__(self, root: Path) -> None:
        self.root = root / f"v{VERSION}"
        self.root.mkdir(parents=True, exist_ok=True)
        self._photo: np.ndarray | None = None

    def photo_pixels(self) -> np.ndarray:
        if self._photo is None:
            self._photo = photo_array(4000, 3000, seed=1)
        return self._photo

    def path(self, name: str) -> Path:
        target = self.root / name
        if not target.exists():
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(self._make(name))
            tmp.replace(target)
        return target

    def bytes(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def cold_photo(self, run: int) -> bytes:
        """A distinct 12 MP JPEG per run (one pixel differs)."""
        return variant_of(self.photo_pixels(), run, self.PHOTO_QUALITY)

    def _make(self, name: str) -> bytes:
        if name == self.PHOTO_12MP:
            return jpeg_bytes(self.photo_pixels(), self.PHOTO_QUALITY)
        if name == self.HUGE_93MP:
            return jpeg_bytes(photo_array(9600, 9700, seed=2, noise=4.0), 85)
        if name == self.UPLOAD_10MB:
            return jpeg_bytes(photo_array(6000, 4000, seed=5, noise=12.0), 91)
        if name == self.PNG_ALPHA:
            return png_alpha_bytes()
        if name == self.GIF:
            return gif_bytes()
        raise KeyError(name)
