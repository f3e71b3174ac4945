"""Decode and preprocess a list of images once, in parallel, keeping uint8 pixels."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .decode import decode_rgb
from .preprocess import ImageMeta, Preprocessor
from .sources import BoxLabels, ImageRecord

#: Stop when more than this fraction of the images cannot be read.
MAX_FAILED_FRACTION = 0.05


@dataclass
class ImageSet:
    """Preprocessed images of one split: uint8 RGB pixels [N, H, W, 3] plus labels and metadata.

    ``failures`` lists the files that could not be read (skipped, never silently)."""

    paths: list[Path]
    pixels: np.ndarray
    labels: np.ndarray | None
    metas: list[ImageMeta]
    failures: list[tuple[Path, str]] = field(default_factory=list)
    boxes: list[BoxLabels] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: np.ndarray | Sequence[int]) -> ImageSet:
        idx = np.asarray(index, dtype=np.int64)
        return ImageSet(
            [self.paths[i] for i in idx],
            self.pixels[idx],
            None if self.labels is None else self.labels[idx],
            [self.metas[i] for i in idx],
            list(self.failures),
            None if self.boxes is None else [self.boxes[i] for i in idx],
        )


Decoded = tuple[np.ndarray, ImageMeta]


def load_images(
    records: Sequence[ImageRecord],
    preprocessor: Preprocessor,
    *,
    cache: dict[Path, Decoded | str] | None = None,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    what: str = "images",
) -> ImageSet:
    """Decode + resize each record once (threads; Pillow releases the GIL while decoding).

    ``cache`` maps a path to its decoded pixels (or the error text) so that an image used by
    two splits is decoded once per run."""
    cache = {} if cache is None else cache

    def work(path: Path) -> Decoded | str:
        try:
            return preprocessor.geometry(decode_rgb(path))
        except Exception as err:  # any decoder failure: the file is listed and skipped
            return f"{type(err).__name__}: {err}"

    todo = sorted({r.path for r in records if r.path not in cache})
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for path, result in zip(todo, pool.map(work, todo), strict=False):
            cache[path] = result
            if progress:
                progress(1)

    ok = [r for r in records if not isinstance(cache[r.path], str)]
    failures = [(r.path, str(cache[r.path])) for r in records if isinstance(cache[r.path], str)]
    if records and len(failures) > MAX_FAILED_FRACTION * len(records):
        first = failures[0]
        raise DataError(
            f"{len(failures)} of {len(records)} {what} could not be read (e.g. {first[0]}: "
            f"{first[1]}); fix or remove those files"
        )
    shapes = {cache[r.path][0].shape for r in ok}  # type: ignore[index]
    if len(shapes) > 1:
        raise DataError(
            f"the preprocessing gives {what} of different sizes {sorted(shapes)[:3]}; "
            "set preprocess.resize.size, center_crop or letterbox to get one input size"
        )
    pixels = np.stack([cache[r.path][0] for r in ok]) if ok else np.zeros((0, 1, 1, 3), np.uint8)  # type: ignore[index]
    labels = (
        np.asarray([r.label for r in ok], dtype=np.int64)
        if ok and all(r.label is not None for r in ok)
        else None
    )
    metas = [cache[r.path][1] for r in ok]  # type: ignore[index]
    boxes = [r.boxes for r in ok] if ok and all(r.boxes is not None for r in ok) else None
    return ImageSet([r.path for r in ok], pixels, labels, metas, failures, boxes)  # type: ignore[arg-type]
