"""Pixel formats and colour: everything a decoded frame needs to become 8-bit sRGB.

Outputs carry no ICC profile, so pixels must *be* sRGB: browsers treat untagged images as sRGB,
and an Adobe RGB or CMYK photo shown raw looks dull or wrong. Bad or unusable profiles are
ignored rather than rejected (browsers do the same), so colour handling never fails a render.
"""

from __future__ import annotations

import io

from PIL import Image, ImageCms

# Modes the resize step works in: 8 bits per channel, alpha straight (Pillow premultiplies
# internally while resampling LA and RGBA, so edges do not pick up a dark halo).
WORKING_MODES = frozenset({"L", "LA", "RGB", "RGBA", "CMYK"})
SIXTEEN_BIT = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def to_working_mode(im: Image.Image) -> Image.Image:
    """Bring any decoded mode to one of WORKING_MODES, losing nothing that matters.

    Palette images must leave ``P`` before resampling (Pillow resizes ``P`` with nearest
    neighbour only); palette transparency becomes a real alpha channel. 16-bit greyscale is
    scaled (Pillow's own ``I;16`` -> ``L`` conversion clips everything above 255 to white).
    """
    mode = im.mode
    if mode in WORKING_MODES:
        return im
    if mode in ("P", "PA"):
        return im.convert("RGBA" if mode == "PA" or im.has_transparency_data else "RGB")
    if mode in SIXTEEN_BIT:
        wide = im if mode == "I" else im.convert("I")
        return wide.point(lambda v: v / 257 + 0.5).convert("L")
    if mode in ("1", "F"):
        return im.convert("L")
    if mode == "La":
        return im.convert("LA")
    if mode in ("RGBa", "RGBX", "YCbCr"):
        return im.convert("RGBA" if mode == "RGBa" else "RGB")
    return im.convert("RGBA" if im.has_transparency_data else "RGB")


def to_srgb(im: Image.Image, icc_profile: bytes | None) -> Image.Image:
    """Convert colour images to sRGB using their embedded profile; CMYK always ends as RGB.

    Greyscale is left as it is: a grey gamma profile shifts tone only slightly, and keeping ``L``
    keeps JPEG and AVIF output single-channel. A profile that already is sRGB is skipped.
    """
    if im.mode in ("L", "LA"):
        return im
    if icc_profile:
        converted = _apply_profile(im, icc_profile)
        if converted is not None:
            return converted
    return im.convert("RGB") if im.mode == "CMYK" else im


def _apply_profile(im: Image.Image, icc_profile: bytes) -> Image.Image | None:
    """The image transformed to sRGB, ``im`` itself if already sRGB, None if unusable."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        if im.mode != "CMYK" and "srgb" in ImageCms.getProfileDescription(source).lower():
            return im
        out_mode = "RGBA" if im.mode == "RGBA" else "RGB"
        # A fresh sRGB profile per call: lcms profile handles are not safe to share across the
        # threads of a gunicorn worker, and creating one costs microseconds.
        transform = ImageCms.buildTransform(
            source,
            ImageCms.createProfile("sRGB"),
            im.mode,
            out_mode,
            renderingIntent=ImageCms.Intent.PERCEPTUAL,
        )
        return ImageCms.applyTransform(im, transform)
    except Exception:  # malformed profile, or one for another colour space than the pixels
        return None


def alpha_is_opaque(im: Image.Image) -> bool:
    """True if every pixel's alpha is 255 (checked on the already-resized image: cheap)."""
    low, _high = im.getchannel("A").getextrema()
    return bool(low == 255)


def finish_alpha(im: Image.Image, fmt: str, background: tuple[int, int, int]) -> Image.Image:
    """Alpha for the output format: kept for WebP/AVIF, flattened on ``background`` for JPEG.

    An alpha channel that is fully opaque is dropped for every format (it only costs bytes and
    encode time). WebP and AVIF get RGBA rather than LA, which neither encoder takes.
    """
    if im.mode not in ("LA", "RGBA"):
        return im
    base_mode = im.mode[:-1]
    if alpha_is_opaque(im):
        return im.convert(base_mode)
    if fmt != "jpeg":
        return im if im.mode == "RGBA" else im.convert("RGBA")
    grey_background = background[0] == background[1] == background[2]
    flat_mode = "L" if base_mode == "L" and grey_background else "RGB"
    flat = Image.new(flat_mode, im.size, background[0] if flat_mode == "L" else background)
    flat.paste(im if flat_mode == "L" or im.mode == "RGBA" else im.convert("RGBA"), mask=im)
    return flat
