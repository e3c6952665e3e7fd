"""JPEG DCT scaling at 3/8, the step Pillow's ``draft`` leaves out between 1/4 and 1/2.

Pillow asks libjpeg for 1/1, 1/2, 1/4 or 1/8 only. libjpeg-turbo (1.2 and later) decodes at any
M/8, and 3/8 is the one that matters here: a 4000 px photo -> 1280 wide decodes at 1500 px
instead of 2000, so the Lanczos step that follows reads 44 % fewer pixels (12 MP -> 1280:
decode + resize 73 -> 60 ms on one core, SSIM against a float reference 0.9977 -> 0.9963 before
encoding). Decoding itself costs the same: the entropy decoding of every coefficient dominates.

How: after Pillow's own ``draft`` chose 1/2, the tile is narrowed to libjpeg's 3/8 output size
and the decoder is given scale denominator 3 (libjpeg picks the smallest M/8 >= 1/3, i.e. 3/8).
Pillow's decoder writes each scanline libjpeg returns into a row buffer sized from the tile, so
the tile must be exactly libjpeg's output size: this uses libjpeg's own rounding
(``jdiv_round_up(size * 3, 8)``), and is only ever done when a probe decode has shown that this
libjpeg really scales by 3/8 (a libjpeg without it would return 1/2-sized rows). The probe is
built so that it cannot overflow either way: both scales give the same row width, only the row
count differs. Anything unexpected in the tile Pillow made leaves Pillow's own draft in place.
"""

from __future__ import annotations

import functools
import io

from PIL import Image, ImageFile, features

#: The scale denominator Pillow passes to libjpeg (scale_num is 1); libjpeg picks 3/8 for it.
DENOMINATOR = 3


def output_size(size: tuple[int, int]) -> tuple[int, int]:
    """libjpeg's output size at 3/8 (jdmaster.c: jdiv_round_up(dimension * 3, 8))."""
    return (-(-size[0] * 3 // 8), -(-size[1] * 3 // 8))


def narrow_draft(im: Image.Image, original: tuple[int, int], target: tuple[int, int]) -> bool:
    """Turn Pillow's 1/2-scale draft of ``im`` into a 3/8 one when 3/8 still covers ``target``.

    ``original`` is the size before Pillow's ``draft``. True when the draft was narrowed.
    """
    scaled = output_size(original)
    if scaled[0] < target[0] or scaled[1] < target[1] or not supported():
        return False
    half = (-(-original[0] // 2), -(-original[1] // 2))
    if im.decoderconfig != (2, 0) or im.size != half or len(im.tile) != 1:
        return False
    tile = im.tile[0]
    if tile[0] != "jpeg" or tile[1] != (0, 0, *half):
        return False
    _ask_for(im, scaled)
    return True


def _ask_for(im: Image.Image, size: tuple[int, int]) -> None:
    """Make ``im``'s one tile decode at 3/8 into ``size``, which must be libjpeg's output size."""
    tile = im.tile[0]
    im.tile = [ImageFile._Tile(tile[0], (0, 0, *size), tile[2], tile[3])]
    im._size = size
    im.decoderconfig = (DENOMINATOR, 0)


@functools.cache
def supported() -> bool:
    """True when this Pillow's libjpeg decodes at 3/8: libjpeg-turbo 2 or later, and a probe
    decode agrees.

    The probe is a 4x8 JPEG whose rows are 2 px wide at 1/2 and at 3/8; only the number of rows
    differs (4 against 3). Asked for 3 rows, a libjpeg that scales by 3/8 delivers exactly those;
    one that falls back to 1/2 leaves a row unread, which libjpeg reports as an error.
    """
    version = features.version("libjpeg_turbo") if features.check_feature("libjpeg_turbo") else None
    if not version or int(version.split(".")[0]) < 2 or not hasattr(ImageFile, "_Tile"):
        return False  # an old or other libjpeg, or a Pillow whose tiles are built differently
    buf = io.BytesIO()
    Image.new("RGB", (4, 8), (200, 40, 90)).save(buf, "JPEG", quality=90)
    try:
        with Image.open(buf) as im:
            if im.tile[0][1] != (0, 0, 4, 8):
                return False
            _ask_for(im, (2, 3))
            im.load()
            red, green, blue = im.getpixel((1, 1))  # type: ignore[misc]
    except Exception:  # Pillow reports libjpeg's error as OSError; anything else: not supported
        return False
    return abs(red - 200) < 24 and abs(green - 40) < 24 and abs(blue - 90) < 24
