"""Calibration observers: activation ranges from captured float tensors.

The engine captures; these functions only reduce arrays to ranges::

    ranges = calibrate(lambda: engine.capture("native", names, images), names, "minmax")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

Ranges = dict[str, tuple[float, float]]
BatchSource = Callable[[], Iterable[dict[str, np.ndarray]]]

_BINS = 4096


def _minmax(source: BatchSource, names: Sequence[str]) -> Ranges:
    lo = dict.fromkeys(names, np.inf)
    hi = dict.fromkeys(names, -np.inf)
    for batch in source():
        for name in names:
            x = batch[name]
            if x.size:
                lo[name] = min(lo[name], float(x.min()))
                hi[name] = max(hi[name], float(x.max()))
    return {n: (lo[n], hi[n]) if np.isfinite(lo[n]) else (0.0, 0.0) for n in names}


def _percentile(source: BatchSource, names: Sequence[str], p: float) -> Ranges:
    """Two passes: min/max, then a fixed-bin histogram over it; the lower and upper
    (100 - p)% tails are cut. A tensor that never goes below 0 keeps its 0 lower bound."""
    full = _minmax(source, names)
    hist = {n: np.zeros(_BINS, dtype=np.int64) for n in names}
    for batch in source():
        for name in names:
            lo, hi = full[name]
            if hi > lo:
                hist[name] += np.histogram(batch[name], bins=_BINS, range=(lo, hi))[0]
    out: Ranges = {}
    for name in names:
        lo, hi = full[name]
        h = hist[name]
        total = h.sum()
        if hi <= lo or total == 0:
            out[name] = (lo, hi)
            continue
        edges = np.linspace(lo, hi, _BINS + 1)
        cdf = np.cumsum(h) / total
        tail = (100.0 - p) / 100.0
        upper = float(edges[min(np.searchsorted(cdf, 1.0 - tail) + 1, _BINS)])
        lower = float(edges[np.searchsorted(cdf, tail)]) if lo < 0 else lo
        out[name] = (min(lower, upper), upper)
    return out


def calibrate(
    source: BatchSource, names: Sequence[str], method: str = "minmax", percentile: float = 99.99
) -> Ranges:
    """Ranges (lo, hi) of each named tensor over all batches ``source()`` yields.

    ``source`` is called once per pass (percentile needs two)."""
    if method == "minmax":
        return _minmax(source, names)
    if method == "percentile":
        return _percentile(source, names, percentile)
    raise ValueError(f"unknown calibration method {method!r}")


def iter_once(batches: Iterator[dict[str, np.ndarray]]) -> BatchSource:
    """Wrap a one-shot iterator (minmax needs a single pass)."""
    return lambda: batches
