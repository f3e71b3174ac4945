"""Decoding any image Pillow reads into 8-bit RGB, or one clear reason why it cannot be.

- EXIF orientation is applied by default (:func:`PIL.ImageOps.exif_transpose`): the image as
  the camera's user saw it and labelled it, as Ultralytics and OpenCV's ``imread`` do;
  ``preprocess.exif_orientation: false`` keeps the stored pixel order, as
  ``Image.open(path).convert("RGB")`` (torchvision's ImageFolder) does.
- 16-bit greyscale (modes ``I;16*`` and ``I``) is scaled from 0..65535 to 0..255, decided by
  the mode, never by the values (a dark 16-bit image is still 16-bit).
- CMYK (JPEG, TIFF) is converted with Pillow's plain formula, without colour management
  (as deployed Pillow pipelines do); CMYK JPEGs are read with the Adobe convention
  (inverted inks) that Pillow and Photoshop write.
- Animated images give their first frame; alpha is dropped, as a 3-channel pipeline does.
- Truncated or corrupt files and images above Pillow's decompression-bomb guard
  (``PIL.Image.MAX_IMAGE_PIXELS``) raise :class:`UnreadableImageError` with the reason, so
  that the data layer lists them and goes on with the rest. The guard is never raised
  silently: set the environment variable ``QUANTDOCTOR_MAX_IMAGE_PIXELS`` to a larger pixel
  count to allow bigger (trusted) images.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError

#: The environment variable that sets Pillow's decompression-bomb guard (pixels per image).
MAX_PIXELS_ENV = "QUANTDOCTOR_MAX_IMAGE_PIXELS"

_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_SWAPS_AXES = frozenset({5, 6, 7, 8})  # EXIF orientations that rotate by 90 degrees
_ORIENTATION = 0x0112


class UnreadableImageError(DataError):
    """An image file that cannot be decoded; the message is the reason shown to the user."""


def apply_pixel_limit() -> int | None:
    """Apply ``QUANTDOCTOR_MAX_IMAGE_PIXELS`` (when set) to Pillow's guard; returns the limit
    in force (``None``: no limit)."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) <= 0:
            raise DataError(
                f"{MAX_PIXELS_ENV}={raw!r} is not a pixel count; give a positive integer, "
                f"e.g. {MAX_PIXELS_ENV}=200000000"
            )
        Image.MAX_IMAGE_PIXELS = int(raw)  # the user's explicit choice
    return Image.MAX_IMAGE_PIXELS


def _too_large(pixels: int | None, limit: int | None) -> UnreadableImageError:
    has = f"the image has {pixels} pixels, more than" if pixels else "the image is larger than"
    allow = f"{MAX_PIXELS_ENV}={pixels}" if pixels else f"{MAX_PIXELS_ENV} (a pixel count)"
    return UnreadableImageError(
        f"{has} Pillow's limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS, a guard against "
        f"decompression bombs); if the file is trusted, allow it with the environment "
        f"variable {allow}, or downscale the image"
    )


def _damaged(err: Exception) -> UnreadableImageError:
    # Pillow's own words (e.g. "image file is truncated (57 bytes not processed)") say where
    return UnreadableImageError(
        f"the file is truncated or corrupt (Pillow: {err}); re-export or remove it"
    )


def _pixel_count(err: Exception) -> int | None:
    match = re.search(r"\((\d+) pixels\)", str(err))
    return int(match.group(1)) if match else None


def _open(path: Path) -> Image.Image:
    """``Image.open`` with its failures turned into reasons."""
    try:
        return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # the warning arrives as an exception only where warnings are errors (-W error)
        raise _too_large(_pixel_count(err), Image.MAX_IMAGE_PIXELS) from None
    except UnidentifiedImageError:
        raise UnreadableImageError(
            "not an image Pillow can read (unknown format, or the file is damaged at its start)"
        ) from None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
        raise UnreadableImageError(f"the file cannot be opened ({err.strerror})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # a damaged header
        raise _damaged(err) from None


def _check_size(img: Image.Image) -> None:
    """Pillow only warns between its limit and twice the limit: refuse those images too, so
    that every image above the guard is listed the same way."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        raise _too_large(img.width * img.height, limit)


def oriented_hw(path: Path, exif_orientation: bool = True) -> tuple[int, int]:
    """(height, width) of the decoded image, from the header only (EXIF orientation swaps
    them when applied)."""
    with _open(path) as img:
        h, w = img.height, img.width
        if exif_orientation and img.getexif().get(_ORIENTATION) in _SWAPS_AXES:
            h, w = w, h
    return h, w


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT:
        # Pillow's own conversion clips at 255 instead of scaling; round(v / 257) maps
        # 0..65535 onto 0..255 exactly.
        a = np.asarray(img, dtype=np.float64)
        a = np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if img.mode == "F":
        raise UnreadableImageError(
            "32-bit floating-point pixels have no defined 0-255 range; save the image as an "
            "8- or 16-bit file"
        )
    if img.mode == "P" and "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def decode_rgb(path: Path, exif_orientation: bool = True) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image (see the module docstring for each kind of file).

    Raises :class:`UnreadableImageError` with the reason for a file that cannot be used."""
    apply_pixel_limit()
    with _open(path) as img:
        _check_size(img)
        try:
            img.load()  # the first frame of an animation
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise _damaged(err) from None
        out: Image.Image = img
        if exif_orientation:
            try:
                out = ImageOps.exif_transpose(out)
            except Exception as err:  # a damaged EXIF block: say so rather than guess
                raise UnreadableImageError(
                    f"its EXIF orientation cannot be read ({type(err).__name__}: {err}); "
                    "set preprocess.exif_orientation: false to ignore it"
                ) from None
        rgb = _to_rgb(out)
        return rgb.copy() if rgb is img else rgb
