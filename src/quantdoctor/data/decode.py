"""Decoding any image Pillow reads into 8-bit RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def decode_rgb(path: Path) -> Image.Image:
    """Open ``path`` as an RGB image: greyscale, palette, CMYK, 16-bit and alpha are converted
    (alpha is dropped, as an accelerator pipeline that feeds 3 channels does)."""
    with Image.open(path) as img:
        img.load()
        if img.mode == "RGB":
            return img.copy()
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            a = np.asarray(img, dtype=np.float64)
            hi = 65535.0 if a.max() > 255 else 255.0
            a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
            return Image.fromarray(a, "L").convert("RGB")
        if img.mode == "P" and "transparency" in img.info:
            return img.convert("RGBA").convert("RGB")
        return img.convert("RGB")
