"""Giving freed memory back to the system.

ONNX Runtime's sessions without an arena (captures) and numpy allocate and free hundreds of
megabytes per batch; glibc's malloc keeps what was freed for reuse (its mmap threshold
grows with every large free), so the resident memory of a run only ever grew: on
EfficientNet-Lite0, 1.8 GB resident after the layer statistics with 68 MB of live Python
objects, 0.56 GB after ``malloc_trim``. The engine calls :func:`release_free_memory` after
each captured batch and each model pass.

>>> release_free_memory()                      # doctest: +SKIP
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache


@cache
def _malloc_trim() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to call
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the C heap's free pages to the system (glibc ``malloc_trim``); False where
    there is no such call. Costs about a millisecond."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)  # type: ignore[operator]
    return True


__all__ = ["release_free_memory"]
