"""Decode and preprocess a list of images once, in parallel, keeping uint8 pixels."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .decode import UnreadableImageError, apply_pixel_limit, decode_rgb
from .preprocess import ImageMeta, Preprocessor
from .sources import BoxLabels, ImageRecord

#: Stop when more than this fraction of the images cannot be read.
MAX_FAILED_FRACTION = 0.05


@dataclass
class ImageSet:
    """Preprocessed images of one split: uint8 RGB pixels [N, H, W, 3] plus labels and metadata.

    ``failures`` lists the files that could not be read (skipped, never silently). A subset
    holds row numbers into its parent's pixels, not a copy of them (``rows``): the pixels of
    a run are held once, whatever subsets the checks draw from them.

    >>> images.batch(0, 16).shape                   # doctest: +SKIP
    (16, 224, 224, 3)"""

    paths: list[Path]
    stored: np.ndarray
    labels: np.ndarray | None
    metas: list[ImageMeta]
    failures: list[tuple[Path, str]] = field(default_factory=list)
    boxes: list[BoxLabels] | None = None
    #: the rows of ``stored`` that are this set's images, in order (None: all of them)
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def pixels(self) -> np.ndarray:
        """All pixels [N, H, W, 3] (a copy for a subset: prefer :meth:`batch`)."""
        return self.stored if self.rows is None else self.stored[self.rows]

    @property
    def hw(self) -> tuple[int, int]:
        """Height and width of every image."""
        return int(self.stored.shape[1]), int(self.stored.shape[2])

    def batch(self, start: int, stop: int) -> np.ndarray:
        """The pixels of images ``start`` … ``stop - 1``."""
        return self.stored[start:stop] if self.rows is None else self.stored[self.rows[start:stop]]

    def subset(self, index: np.ndarray | Sequence[int]) -> ImageSet:
        idx = np.asarray(index, dtype=np.int64)
        return ImageSet(
            [self.paths[i] for i in idx],
            self.stored,
            None if self.labels is None else self.labels[idx],
            [self.metas[i] for i in idx],
            list(self.failures),
            None if self.boxes is None else [self.boxes[i] for i in idx],
            idx if self.rows is None else self.rows[idx],
        )


Decoded = tuple[np.ndarray, ImageMeta]
#: Decoded pixels (or the reason a file is unreadable) by file and decoding settings.
DecodeCache = dict[tuple[Path, str], Decoded | str]


def load_images(
    records: Sequence[ImageRecord],
    preprocessor: Preprocessor,
    *,
    cache: DecodeCache | None = None,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    what: str = "images",
) -> ImageSet:
    """Decode + resize each record once (threads; Pillow releases the GIL while decoding).

    ``cache`` maps a file and the decoding settings (EXIF orientation, resize, crop,
    letterbox) to its pixels (or the reason it cannot be read), so that an image used by two
    splits is decoded once per run and engines with other settings never share pixels."""
    cache = {} if cache is None else cache
    settings = preprocessor.geometry_key
    exif = preprocessor.config.exif_orientation
    apply_pixel_limit()  # a bad QUANTDOCTOR_MAX_IMAGE_PIXELS is one error, not N failures

    def work(path: Path) -> Decoded | str:
        try:
            return preprocessor.geometry(decode_rgb(path, exif_orientation=exif))
        except UnreadableImageError as err:
            return str(err)
        except Exception as err:  # any other decoder failure: the file is listed and skipped
            return f"{type(err).__name__}: {err}"

    # Each image's pixels go straight into their row of the split's array as they are
    # decoded, so the pixels are held once (not as N arrays and then a stacked copy: 1.5 GB
    # more at the peak for 10,000 images of 224 x 224).
    rows_of: dict[Path, list[int]] = {}
    for i, r in enumerate(records):
        rows_of.setdefault(r.path, []).append(i)
    stacked: np.ndarray | None = None
    shapes: set[tuple[int, ...]] = set()
    metas_of: dict[Path, ImageMeta] = {}
    failed: dict[Path, str] = {}

    def place(path: Path, result: Decoded | str) -> None:
        nonlocal stacked
        if isinstance(result, str):
            failed[path] = result
            return
        pixels, meta = result
        shapes.add(pixels.shape)
        if stacked is None:
            stacked = np.empty((len(records), *pixels.shape), dtype=np.uint8)
        if pixels.shape == stacked.shape[1:]:
            for i in rows_of[path]:
                stacked[i] = pixels
        metas_of[path] = meta

    todo = sorted({r.path for r in records if (r.path, settings) not in cache})
    for path in rows_of:
        if (path, settings) in cache:
            place(path, cache[path, settings])
    with warnings.catch_warnings():
        # decode_rgb refuses images above the guard with a reason; Pillow's warning about
        # them (or, under -W error, its exception in a worker) would only repeat it
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            for path, result in zip(todo, pool.map(work, todo), strict=False):
                place(path, result)
                if isinstance(result, str):
                    cache[path, settings] = result
                if progress:
                    progress(1)

    ok = [r for r in records if r.path not in failed]
    failures = [(r.path, failed[r.path]) for r in records if r.path in failed]
    if records and len(failures) > MAX_FAILED_FRACTION * len(records):
        first = failures[0]
        raise DataError(
            f"{len(failures)} of {len(records)} {what} could not be read (e.g. {first[0]}: "
            f"{first[1]}); fix or remove those files"
        )
    if len(shapes) > 1:
        raise DataError(
            f"the preprocessing gives {what} of different sizes {sorted(shapes)[:3]}; "
            "set preprocess.resize.size, center_crop or letterbox to get one input size"
        )
    if stacked is None:
        pixels = np.zeros((0, 1, 1, 3), np.uint8)
    else:
        kept = 0  # unreadable images' rows are dropped: the others move up, in place
        for i, r in enumerate(records):
            if r.path in failed:
                continue
            if i != kept:
                stacked[kept] = stacked[i]
            kept += 1
        pixels = stacked[:kept]
    for i, r in enumerate(ok):  # pixels held once: the cache keeps views of the split's array
        cache[r.path, settings] = (pixels[i], metas_of[r.path])
    labels = (
        np.asarray([r.label for r in ok], dtype=np.int64)
        if ok and all(r.label is not None for r in ok)
        else None
    )
    metas = [metas_of[r.path] for r in ok]
    boxes = [r.boxes for r in ok] if ok and all(r.boxes is not None for r in ok) else None
    return ImageSet([r.path for r in ok], pixels, labels, metas, failures, boxes)  # type: ignore[arg-type]
