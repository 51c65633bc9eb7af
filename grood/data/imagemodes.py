"""How each Pillow image mode becomes the RGB image a network reads, and which modes are refused.

Pillow's ``image.convert("RGB")`` (what OpenOOD's loader calls) is right for 8-bit images (``RGB``, ``L``,
``1``, ``P``) and silently wrong for others: a 16-bit grey PNG (mode ``I;16``) is *clipped* to 8 bits, so every
value above 255 becomes 255 (a typical 16-bit image turns almost white). The rule here, one per mode family:

=====================  ===========================================================================
mode                   what the network reads
=====================  ===========================================================================
RGB, L, 1, P           Pillow's conversion (exact for 8-bit data): *standard*, not recorded
I;16, I;16L/B/N, I     16-bit grey, **scaled by value**: ``round(v * 255 / 65535)``; ``I`` (how
                       Pillow opens some 16-bit files) must hold values in ``0..65535``, else refused
RGBA, LA, PA, RGBa,    the colour channels as stored, transparency dropped (what OpenOOD reads);
transparency info      ``P``/``L``/``RGB`` with a transparency entry count here as ``<mode>+transparency``
CMYK, YCbCr, HSV,      Pillow's colour-space formula (no ICC profile)
LAB, RGBX
F, La, anything else   **refused**: no agreed pixel range (float) or no conversion; convert the file
                       to 8-bit RGB or L yourself
=====================  ===========================================================================

Every image whose mode is not *standard* is recorded (``run.json`` ``input_images.modes``: the mode, its
treatment, how many images, the first few files), and logged; a refused mode stops the run before compute.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Modes Pillow converts to RGB exactly (8-bit data).
STANDARD_MODES = frozenset({"RGB", "L", "1", "P"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})
COLOUR_SPACE_MODES = frozenset({"CMYK", "YCbCr", "HSV", "LAB", "RGBX"})
TRANSPARENCY_SUFFIX = "+transparency"

TREATMENT_16_BIT = "16-bit grey scaled to 8 bits by value: round(v * 255 / 65535)"
TREATMENT_ALPHA = "transparency dropped: the colour channels as stored (as OpenOOD's loader reads them)"
TREATMENT_COLOUR_SPACE = "converted to RGB by Pillow's colour-space formula (no ICC profile)"


def effective_mode(image: Image.Image) -> str:
    """``image.mode``, with ``+transparency`` appended when an RGB/L/P image carries a transparency entry."""
    if image.mode in ("P", "L", "RGB") and "transparency" in image.info:
        return image.mode + TRANSPARENCY_SUFFIX
    return image.mode


def treatment(mode: str) -> str | None:
    """How an image of effective ``mode`` becomes RGB: ``None`` for a standard mode, else the recorded text.

    Raises:
        ValueError: a refused mode, with what to do.
    """
    if mode in STANDARD_MODES:
        return None
    if mode in SIXTEEN_BIT_MODES:
        return TREATMENT_16_BIT
    if mode in ALPHA_MODES or mode.endswith(TRANSPARENCY_SUFFIX):
        return TREATMENT_ALPHA
    if mode in COLOUR_SPACE_MODES:
        return TREATMENT_COLOUR_SPACE
    why = "32-bit float pixels have no agreed range (0..1 or 0..255)" if mode == "F" else \
        "grood has no exact conversion of it to RGB"
    raise ValueError(f"image mode {mode!r} is refused: {why}; convert the file to 8-bit RGB or L, or delete the line")


def _sixteen_bit_to_grey(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(
            f"image mode {image.mode!r} holds values {values.min()}..{values.max()}, outside the 16-bit range "
            "0..65535 grood scales from; convert the file to 8-bit RGB or L, or delete the line"
        )
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))  # round(v * 255 / 65535)


def check_mode(image: Image.Image) -> str:
    """The effective mode of a decoded ``image``, after checking that it can be converted (a 16-bit image's
    values lie in ``0..65535``).

    Raises:
        ValueError: a refused mode or out-of-range values, naming the mode and what to do.
    """
    mode = effective_mode(image)
    treatment(mode)
    if mode in SIXTEEN_BIT_MODES:
        _sixteen_bit_to_grey(image)
    return mode


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as the RGB image the networks read, by the rule of this module (always a new image, as
    Pillow's ``convert``).

    Raises:
        ValueError: a refused mode or out-of-range 16-bit values.
    """
    mode = effective_mode(image)
    treatment(mode)
    if mode in SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_grey(image).convert("RGB")
    return image.convert("RGB")
