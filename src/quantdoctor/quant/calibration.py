"""Calibration observers: activation ranges from captured float tensors.

The engine captures; these functions only reduce arrays to ranges::

    ranges = calibrate(lambda: engine.capture("native", names, images), names, "minmax")

Methods (``calibrate``), each in as few passes over ``source()`` as it can (a pass re-runs
the model):

- ``minmax``: the observed min and max (one pass).
- ``percentile``: exactly ``np.percentile(all_values, p)`` for the upper bound and
  ``np.percentile(all_values, 100 - p)`` for the lower one (a tensor that never goes below 0
  keeps its min). One pass keeping the :data:`TAIL_CAP` smallest and largest values of each
  tensor; exact whenever the tail that the percentile needs fits in that (p = 99.99 up to
  655M values per tensor); otherwise a second pass keeps exactly the tail needed, now that
  the count is known.
- ``mse``: the range of least quantization MSE (clipping + rounding) under the scheme,
  searched on a fine histogram (one pass).
- ``entropy``: TensorRT's KL-divergence threshold on a histogram of ``|x|`` (one pass).

:func:`clip_range` gives the same (percentile, mse) for one tensor's values in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from .target import QuantScheme

Ranges = dict[str, tuple[float, float]]
BatchSource = Callable[[], Iterable[dict[str, np.ndarray]]]

#: The scheme when none is given: 8-bit unsigned asymmetric (uint8 activations).
DEFAULT_SCHEME = QuantScheme()

#: Values kept at each end of each tensor in the one-pass percentile.
TAIL_CAP = 1 << 16

#: Most bins of the one-pass histograms (mse, entropy); at least half of them cover the data.
HIST_BINS = 4096

#: Candidates of the MSE search: coarse geometric shrink factors of the range (per bound).
MSE_COARSE_1D, MSE_COARSE_2D, MSE_MIN_FACTOR = 128, 32, 1e-3

#: Refinement rounds of the MSE search around the best coarse candidate, and their grid.
MSE_REFINE_ROUNDS, MSE_REFINE_POINTS_1D, MSE_REFINE_POINTS_2D = 3, 17, 9

#: Histogram cells evaluated at once by the MSE search (bounds its memory).
_MSE_CHUNK = 1 << 16


# --- calibrate --------------------------------------------------------------------------------
def calibrate(
    source: BatchSource,
    names: Sequence[str],
    method: str = "minmax",
    percentile: float = 99.99,
    scheme: QuantScheme | None = None,
) -> Ranges:
    """Ranges (lo, hi) of each named tensor over all batches ``source()`` yields.

    ``source`` is called once per pass: once for every method, twice for ``percentile`` only
    when the tail it needs exceeds :data:`TAIL_CAP`. ``scheme`` (default
    :data:`DEFAULT_SCHEME`) is the activations' quantization, used by ``mse`` and
    ``entropy``. A tensor without values gets (0, 0)."""
    scheme = scheme or DEFAULT_SCHEME
    if method == "minmax":
        return _minmax(source, names)
    if method == "percentile":
        return _percentile(source, names, percentile)
    if method == "mse":
        hists = _histograms(source, names, absolute=False)
        return {n: mse_range(hists[n], scheme) for n in names}
    if method == "entropy":
        hists = _histograms(source, names, absolute=True)
        return {n: entropy_range(hists[n], scheme) for n in names}
    raise ValueError(f"unknown calibration method {method!r}")


def clip_range(
    values: np.ndarray, mode: str, params: Sequence[float] | None, scheme: QuantScheme | None
) -> tuple[float, float]:
    """The clipping range of one tensor's values (activation / weight clipping remedies).

    ``percentile``: ``params = [lo_pct, hi_pct]``, exact ``np.percentile`` of ``values``;
    ``mse``: the range of least quantization MSE under ``scheme`` (``params`` unused);
    ``manual``: ``params = [lo, hi]`` as given."""
    if mode in ("percentile", "manual"):
        if params is None or len(params) != 2:
            raise ValueError(f"clip mode {mode!r} needs two values [low, high], got {params!r}")
        if mode == "manual":
            return float(params[0]), float(params[1])
        return exact_percentiles(values, float(params[0]), float(params[1]))
    if mode == "mse":
        hist = Histogram()
        hist.add(values)
        return mse_range(hist, scheme or DEFAULT_SCHEME)
    raise ValueError(f"unknown clip mode {mode!r}; known: percentile, mse, manual")


def iter_once(batches: Iterator[dict[str, np.ndarray]]) -> BatchSource:
    """Wrap a one-shot iterator (for one pass: a percentile that needs a second one fails)."""
    return lambda: batches


def exact_percentiles(values: np.ndarray, *ps: float) -> tuple[float, ...]:
    """``np.percentile(values, p)`` for each ``p`` (bit for bit the same as one call per
    ``p``), with one partition of the values for all of them."""
    x = np.asarray(values).ravel()
    if not x.size:
        return tuple(0.0 for _ in ps)
    n = x.size
    idx = {min(int(np.floor(_virtual_index(n, p))) + d, n - 1) for p in ps for d in (0, 1)}
    part = np.partition(x, sorted(i for i in idx if i >= 0))
    return tuple(_lerp_percentile(lambda i: part[i], n, p) for p in ps)


# --- minmax -----------------------------------------------------------------------------------
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


# --- percentile -------------------------------------------------------------------------------
class Tails:
    """The ``low_cap`` smallest and ``high_cap`` largest values of a stream, and its count.

    Every trim keeps the top ``cap`` of (kept ∪ new), so the kept values always contain the
    top ``cap`` of everything seen (by induction: the top ``cap`` of all values lie in the kept
    top ``cap`` of the earlier values or in the new batch). A budget that grows with the count
    would not help: a value dropped at a smaller budget is gone for good, so what is kept is
    only ever guaranteed down to the smallest budget of any trim; hence a fixed cap, checked
    against the final count (:meth:`holds`). Once a tail is full, only the values beyond its
    current bound are merged (a comparison instead of a partition of the whole batch)."""

    def __init__(self, high_cap: int, low_cap: int | None = None) -> None:
        self.high_cap = high_cap
        self.low_cap = high_cap if low_cap is None else low_cap
        self.n = 0
        self.low: np.ndarray | None = None  # unsorted; when full, low[-1] is its max
        self.high: np.ndarray | None = None  # unsorted; when full, high[0] is its min

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x).ravel()
        if not x.size:
            return
        self.n += x.size
        self.high = _keep_largest(self.high, x, self.high_cap)
        self.low = _keep_smallest(self.low, x, self.low_cap)

    def holds(self, low_needed: int, high_needed: int) -> bool:
        """Whether the kept tails are (contain) the ``low_needed`` smallest and the
        ``high_needed`` largest values."""
        low_ok = self.n <= self.low_cap or low_needed <= self.low_cap
        high_ok = self.n <= self.high_cap or high_needed <= self.high_cap
        return low_ok and high_ok


def _keep_largest(kept: np.ndarray | None, x: np.ndarray, cap: int) -> np.ndarray:
    """The ``cap`` largest of ``kept`` ∪ ``x``, their min first once there are ``cap``."""
    if kept is not None and kept.size == cap:
        x = x[x > kept[0]]
        if not x.size:
            return kept
    x = x if kept is None else np.concatenate((kept, x))
    if x.size < cap:
        return x.copy() if kept is None else x
    return np.partition(x, x.size - cap)[x.size - cap :]


def _keep_smallest(kept: np.ndarray | None, x: np.ndarray, cap: int) -> np.ndarray:
    """The ``cap`` smallest of ``kept`` ∪ ``x``, their max last once there are ``cap``."""
    if kept is not None and kept.size == cap:
        x = x[x < kept[-1]]
        if not x.size:
            return kept
    x = x if kept is None else np.concatenate((kept, x))
    if x.size < cap:
        return x.copy() if kept is None else x
    return np.partition(x, cap - 1)[:cap]


def _virtual_index(n: int, p: float) -> np.float64:
    """numpy's linear-method position of percentile ``p`` in ``n`` sorted values."""
    return (n - 1) * np.true_divide(p, 100)


def _needed(n: int, p: float) -> tuple[int, int]:
    """How many smallest values ``np.percentile(x, 100 - p)`` and how many largest values
    ``np.percentile(x, p)`` read from ``n`` values."""
    lo = int(np.floor(_virtual_index(n, 100 - p))) + 2
    hi = n - int(np.floor(_virtual_index(n, p)))
    return min(max(lo, 1), n), min(max(hi, 1), n)


def _lerp_percentile(value_at: Callable[[int], np.generic], n: int, p: float) -> float:
    """``np.percentile`` (linear method) of ``n`` values, ``value_at(i)`` being the i-th
    smallest; the same arithmetic as numpy's ``_quantile`` / ``_lerp``."""
    vi = _virtual_index(n, p)
    if vi >= n - 1:
        return float(value_at(n - 1))
    if vi < 0:
        return float(value_at(0))
    i = int(np.floor(vi))
    t = float(vi - np.floor(vi))
    a, b = value_at(i), value_at(i + 1)
    d = b - a
    return float(b - d * (1 - t) if t >= 0.5 else a + d * t)


def _tail_range(tails: Tails, p: float) -> tuple[float, float]:
    """The exact (lo, hi) from tails that hold what the percentiles need."""
    n = tails.n
    if n == 0 or tails.low is None or tails.high is None:
        return 0.0, 0.0
    low, high = np.sort(tails.low), np.sort(tails.high)
    offset = n - high.size  # high[j] is the (offset + j)-th smallest value
    hi = _lerp_percentile(lambda i: high[i - offset], n, p)
    # never below 0: the range starts at the min, as minmax does
    lo = float(low[0]) if low[0] >= 0 else _lerp_percentile(lambda i: low[i], n, 100 - p)
    return min(lo, hi), hi


def _percentile(source: BatchSource, names: Sequence[str], p: float) -> Ranges:
    """Exact percentiles: one pass with :data:`TAIL_CAP` values per tail; a tensor whose
    needed tail is longer gets a second pass keeping exactly that (the count and the sign of
    the min are known then: a tensor that never goes below 0 needs only its min)."""
    tails = {n: Tails(TAIL_CAP) for n in names}
    out: Ranges = {}
    counts: dict[str, int] = {}
    while tails:
        for batch in source():
            for name, t in tails.items():
                t.add(batch[name])
        again = {}
        for name, t in tails.items():
            if counts.get(name, t.n) != t.n:
                raise RuntimeError(
                    f"percentile calibration: tensor {name!r} had {counts[name]} values in the "
                    f"first pass and {t.n} in the second; the source must yield the same "
                    "batches each time it is called"
                )
            low_need, high_need = _needed(t.n, p) if t.n else (0, 0)
            nonnegative = t.low is not None and t.low.size > 0 and t.low.min() >= 0
            low_need = 1 if nonnegative else low_need
            if t.holds(low_need, high_need):
                out[name] = _tail_range(t, p)
            else:
                again[name] = Tails(high_need, low_need)
                counts[name] = t.n
        tails = again
    return {n: out[n] for n in names}


# --- histograms -------------------------------------------------------------------------------
class Histogram:
    """Counts in bins of width ``w = 2**exp`` aligned to 0 (bin k is ``[k w, (k + 1) w)``) that
    always cover 0 and every value seen, in at most ``bins`` bins: when a batch does not fit,
    the width doubles and pairs of bins merge (exactly, the edges being aligned). The width is
    the smallest such power of two, so at least about ``bins / 2`` bins span
    ``[min(lo, 0), max(hi, 0)]``, whatever the order of the batches (one pass). Exact zeros
    (ReLU, padding) are counted apart, in ``zeros``, not in the bins.

    ``absolute`` counts ``|x|`` (the entropy method); ``raw_lo``/``raw_hi`` are then still
    the extremes of ``x``."""

    def __init__(self, bins: int = HIST_BINS, absolute: bool = False) -> None:
        self.bins = bins
        self.absolute = absolute
        self.exp: int | None = None  # None until a non-zero value sets the width
        self.start = 0  # bin index of counts[0]
        self.counts = np.zeros(0, dtype=np.int64)
        self.zeros = 0
        self.n = 0
        self.lo = math.inf  # exact extremes of the values counted (|x| when absolute)
        self.hi = -math.inf
        self.raw_lo = math.inf  # exact extremes of x itself
        self.raw_hi = -math.inf

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exp) if self.exp is not None else 1.0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x).ravel()
        if not x.size:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"cannot histogram non-finite values (min {lo}, max {hi})")
        self.raw_lo, self.raw_hi = min(self.raw_lo, lo), max(self.raw_hi, hi)
        if self.absolute:
            x = np.abs(x)
            lo, hi = max(0.0, lo, -hi), max(-lo, hi)
        self.n += x.size
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        zeros = int(np.count_nonzero(x == 0)) if lo <= 0 <= hi else 0
        self.zeros += zeros
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if hi == lo:
            return  # only zeros
        if self.exp is None:
            self.exp = math.ceil(math.log2((hi - lo) / (self.bins - 2)))
        k_lo, k_hi = self._span(lo, hi)
        while k_hi - k_lo + 1 > self.bins:
            self._merge()
            k_lo, k_hi = self._span(lo, hi)
        counts = np.zeros(k_hi - k_lo + 1, dtype=np.int64)
        counts[self.start - k_lo : self.start - k_lo + self.counts.size] = self.counts
        idx = np.floor(x * np.float64(math.ldexp(1.0, -self.exp))).astype(np.int64) - k_lo
        counts += np.bincount(idx, minlength=counts.size)
        counts[-k_lo] -= zeros  # zeros fell in bin 0
        self.counts, self.start = counts, k_lo

    def _span(self, lo: float, hi: float) -> tuple[int, int]:
        w = self.width
        first = self.start if self.counts.size else 0
        last = self.start + self.counts.size - 1 if self.counts.size else 0
        return min(first, math.floor(lo / w)), max(last, math.floor(hi / w))

    def _merge(self) -> None:
        """Double the width: bin k becomes bin k // 2."""
        assert self.exp is not None
        c = self.counts
        odd = self.start % 2
        if odd:
            c = np.concatenate(([0], c))
        if c.size % 2:
            c = np.concatenate((c, [0]))
        self.counts = c.reshape(-1, 2).sum(axis=1)
        self.start = (self.start - odd) // 2
        self.exp += 1

    def intervals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(a, b, count)`` of every non-empty bin, its edges clipped to the observed
        extremes (so that a constant tensor's bin is the point of its value)."""
        k = np.flatnonzero(self.counts)
        a = (k + self.start).astype(np.float64) * self.width
        a, b = np.clip(a, self.lo, self.hi), np.clip(a + self.width, self.lo, self.hi)
        return a, b, self.counts[k]


def _histograms(source: BatchSource, names: Sequence[str], absolute: bool) -> dict[str, Histogram]:
    hists = {n: Histogram(absolute=absolute) for n in names}
    for batch in source():
        for name in names:
            try:
                hists[name].add(batch[name])
            except ValueError as e:
                raise ValueError(f"tensor {name!r}: {e}") from None
    return hists


# --- mse --------------------------------------------------------------------------------------
def quant_params(
    lo: np.ndarray, hi: np.ndarray, scheme: QuantScheme
) -> tuple[np.ndarray, np.ndarray]:
    """Vectorized :func:`~quantdoctor.quant.encodings.activation_params`: the same scale
    (float32) and zero point for arrays of ranges."""
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    qmin, qmax = scheme.qmin, scheme.qmax
    if scheme.symmetric:
        amax = np.maximum(-lo, hi)
        if scheme.signed:
            scale, zp = amax / qmax, np.zeros_like(amax)
        else:
            scale = 2 * amax / (qmax - qmin)
            zp = np.full_like(amax, (qmax + qmin + 1) // 2)
    else:
        scale = (hi - lo) / (qmax - qmin)
        with np.errstate(divide="ignore", invalid="ignore"):
            zp = np.where(scale > 0, np.clip(np.rint(qmin - lo / scale), qmin, qmax), qmin)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32).astype(np.float64)
    return scale, zp.astype(np.float64)


def _squared_error_integral(
    a: np.ndarray, b: np.ndarray, s: np.ndarray, low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """``∫_a^b (Q(x) - x)**2 dx`` with Q rounding to the multiples of ``s`` and clipping to
    the levels ``[low, high]`` (``a``, ``b``: bins; ``s``, ``low``, ``high``: candidates as
    columns). With ``ca``, ``cb`` the bin's edges clipped to ``[low, high]``: the clipped
    parts give ``((b - cb)**3 - (a - ca)**3) / 3``, the inner part ``s**3 (H(cb / s) -
    H(ca / s))`` with ``H(u) = floor(u + 1/2) / 12 + (frac(u + 1/2) - 1/2)**3 / 3``, an
    antiderivative of ``(u - round(u))**2``. Products, not ``**`` (numpy's power is slow)."""
    ca, cb = np.clip(a, low, high), np.clip(b, low, high)
    da, db = a - ca, b - cb
    inv = 1.0 / s
    va = ca * inv
    va += 0.5
    wa = np.floor(va)
    va -= wa
    va -= 0.5
    vb = cb * inv
    vb += 0.5
    wb = np.floor(vb)
    vb -= wb
    vb -= 0.5
    s3 = s * s * s
    out = db * db * db
    out -= da * da * da
    out += s3 * (vb * vb * vb - va * va * va)
    out /= 3
    out += (s3 / 12) * (wb - wa)
    return out


def histogram_mse(
    hist: Histogram, lo: np.ndarray, hi: np.ndarray, scheme: QuantScheme
) -> np.ndarray:
    """Mean squared quantize-dequantize error of a histogram's values for each candidate range
    ``(lo[i], hi[i])`` (scale and zero point as :func:`quant_params`), the values being
    uniform within each bin: exact per bin (clipping and rounding integrated in closed form),
    so bins as wide as a quantization step still give the rounding noise right. Exact zeros
    cost nothing (every range contains 0); a bin shrunk to a point counts its point."""
    a, b, counts = hist.intervals()
    scale, zp = quant_params(lo, hi, scheme)
    low, high = (scheme.qmin - zp) * scale, (scheme.qmax - zp) * scale
    wide = b > a
    weights = counts.astype(np.float64)
    a_w, b_w, per_w = a[wide], b[wide], weights[wide] / (b - a)[wide]
    points, per_point = a[~wide], weights[~wide]
    out = np.zeros(scale.size)
    step = max(1, _MSE_CHUNK // max(a.size, 1))
    for i in range(0, scale.size, step):
        s, lo_i, hi_i = (v[i : i + step, None] for v in (scale, low, high))
        if a_w.size:
            out[i : i + step] += _squared_error_integral(a_w, b_w, s, lo_i, hi_i) @ per_w
        if points.size:
            e = np.clip(s * np.rint(points / s), lo_i, hi_i) - points
            out[i : i + step] += (e * e) @ per_point
    return out / max(hist.n, 1)


def mse_range(hist: Histogram, scheme: QuantScheme) -> tuple[float, float]:
    """The range of least quantization MSE (:func:`histogram_mse`) of a histogram's values.

    Candidates shrink the range ``[min(lo, 0), max(hi, 0)]`` (factor 1 = minmax is always
    one): symmetric schemes and one-sided tensors search one factor, others the lower and
    upper factor jointly; a coarse geometric grid down to :data:`MSE_MIN_FACTOR`, then rounds
    of a finer grid around the best. A tensor that never goes below 0 keeps its min as lower
    bound, as minmax does (the quantization is the same: every range contains 0)."""
    if hist.n == 0:
        return 0.0, 0.0
    lo0, hi0 = min(hist.lo, 0.0), max(hist.hi, 0.0)
    if lo0 == hi0:
        return hist.lo, hist.hi
    if scheme.symmetric:
        amax = max(-lo0, hi0)
        f = _search_1d(lambda f: histogram_mse(hist, -amax * f, amax * f, scheme))
        lo, hi = max(lo0, -amax * f), min(hi0, amax * f)
    elif lo0 == 0 or hi0 == 0:
        f = _search_1d(lambda f: histogram_mse(hist, lo0 * f, hi0 * f, scheme))
        lo, hi = lo0 * f, hi0 * f
    else:
        fa, fb = _search_2d(lambda a, b: histogram_mse(hist, lo0 * a, hi0 * b, scheme))
        lo, hi = lo0 * fa, hi0 * fb
    if hist.lo >= 0:
        lo = min(hist.lo, hi)
    return float(lo), float(hi)


def _coarse(points: int) -> np.ndarray:
    return np.geomspace(MSE_MIN_FACTOR, 1.0, points)


def _around(grid: np.ndarray, best: int, points: int) -> np.ndarray:
    """A finer linear grid between the neighbours of ``grid[best]``."""
    left, right = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
    return np.unique(np.clip(np.linspace(left, right, points), MSE_MIN_FACTOR, 1.0))


def _search_1d(cost: Callable[[np.ndarray], np.ndarray]) -> float:
    """The factor in (0, 1] of least cost: a coarse geometric grid, then finer rounds."""
    grid = _coarse(MSE_COARSE_1D)
    best_f, best_c = 1.0, math.inf
    for _ in range(MSE_REFINE_ROUNDS + 1):
        costs = cost(grid)
        i = int(np.argmin(costs))
        if costs[i] < best_c:
            best_f, best_c = float(grid[i]), float(costs[i])
        grid = _around(grid, i, MSE_REFINE_POINTS_1D)
    return best_f


def _search_2d(cost: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> tuple[float, float]:
    """The (lower, upper) factors of least cost: a coarse geometric grid, then finer rounds."""
    ga = gb = _coarse(MSE_COARSE_2D)
    best, best_c = (1.0, 1.0), math.inf
    for _ in range(MSE_REFINE_ROUNDS + 1):
        fa, fb = np.meshgrid(ga, gb, indexing="ij")
        costs = cost(fa.ravel(), fb.ravel()).reshape(fa.shape)
        i, j = np.unravel_index(int(np.argmin(costs)), costs.shape)
        if costs[i, j] < best_c:
            best, best_c = (float(ga[i]), float(gb[j])), float(costs[i, j])
        ga = _around(ga, int(i), MSE_REFINE_POINTS_2D)
        gb = _around(gb, int(j), MSE_REFINE_POINTS_2D)
    return best


# --- entropy ----------------------------------------------------------------------------------
# ONNX Runtime has this method (onnxruntime.quantization.calibrate.HistogramCollector,
# get_entropy_threshold), but it is not reused here: it histograms x, not |x|, symmetrically
# around 0 and merges the slice [-t, t] into num_quantized_bins (128) levels, so a ReLU
# tensor's [0, t] gets 64 of them where a uint8 range has 256; its expanded candidate
# distribution is int64, truncating the averaged counts; and it loops in Python: 0.53 s per
# tensor with 2048 bins on this machine (ONNX Runtime 1.32). Written here, vectorized (the
# merged levels from prefix sums, all candidates at once), is TensorRT's algorithm as in
# pytorch_quantization.calib.histogram._compute_amax_entropy: a histogram of |x| (here the
# one-pass one, 2048 to 4096 bins up to max |x|; TensorRT: 2048), its first bin set to the
# second, candidates from 1/16 of it (TensorRT: bin 128 of 2048), the reference distribution
# with the clipped mass added to its last bin, the candidate with its bins merged into
# 2**(bits - 1) levels (2**bits for an unsigned range [0, t]) spread uniformly over the
# non-empty bins, the last minimum of KL(reference || candidate).

#: The search starts at this fraction of the histogram (TensorRT: bin 128 of 2048).
ENTROPY_START = 1 / 16


def entropy_levels(nonnegative: bool, scheme: QuantScheme) -> int:
    """Quantized bins of the KL search: 2**bits when the tensor is non-negative and the scheme
    puts all its levels on [0, t] (asymmetric), else 2**(bits - 1) (one side of +-t)."""
    return 1 << (scheme.bits - 1 + int(nonnegative and not scheme.symmetric))


def kl_divergences(hist: np.ndarray, levels: int, start: int) -> np.ndarray:
    """KL(reference || candidate) of TensorRT's entropy calibration for every candidate
    number of bins ``i = start .. hist.size`` (threshold = the upper edge of bin ``i - 1``);
    ``inf`` where the candidate is 0 where the reference is not. ``hist`` counts ``|x|``."""
    bins = hist.astype(np.float64)
    if bins.size > 1:
        bins[0] = bins[1]
    total = bins.sum()
    logs = np.zeros_like(bins)
    np.log(bins, out=logs, where=bins > 0)
    csum = np.concatenate(([0.0], np.cumsum(bins)))
    cnz = np.concatenate(([0], np.cumsum(bins > 0)))
    cxlogx = np.concatenate(([0.0], np.cumsum(bins * logs)))
    i = np.arange(start, bins.size + 1)
    # level c holds bins [ceil(c i / levels), ceil((c + 1) i / levels)) (np.linspace(0, i,
    # levels + 1) is exact for a power-of-two number of levels)
    c = np.arange(levels + 1)
    edges = -((-c[None, :] * i[:, None]) // levels)
    s, z = np.diff(csum[edges], axis=1), np.diff(cnz[edges], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(z > 0, s / z, 0.0)  # the candidate's value on the level's bins
        cross = np.where(s > 0, s * np.log(np.where(s > 0, mean, 1.0)), 0.0).sum(axis=1)
    last = bins[i - 1]
    clipped = total - csum[i]
    p_last = last + clipped
    # the level of the last bin: the candidate's value there
    level = (edges[:, 1:] <= (i - 1)[:, None]).sum(axis=1)
    q_last = mean[np.arange(i.size), level]
    with np.errstate(divide="ignore", invalid="ignore"):
        self_term = cxlogx[i - 1] + np.where(p_last > 0, p_last * np.log(p_last), 0.0)
        cross = cross + np.where(last > 0, clipped * np.log(np.where(last > 0, q_last, 1.0)), 0.0)
        kl = (self_term - cross) / total + np.log(csum[i] / total)
    kl[(last == 0) & (clipped > 0)] = np.inf
    kl[csum[i] == 0] = np.inf
    return kl


def entropy_threshold(hist: Histogram, levels: int) -> float:
    """TensorRT's KL threshold of a histogram of ``|x|``, at most the observed max."""
    if hist.n == 0 or hist.exp is None:
        return 0.0
    nz = np.flatnonzero(hist.counts)
    assert hist.start == 0  # |x| >= 0 and 0 is covered
    counts = hist.counts[: nz[-1] + 1]
    if levels >= counts.size:
        return hist.hi  # more levels than bins: clipping cannot pay
    start = max(1, math.ceil(counts.size * ENTROPY_START))
    kl = kl_divergences(counts, levels, start)
    best = kl.size - 1 - int(np.argmin(kl[::-1]))  # the last minimum, as TensorRT
    return min((best + start) * hist.width, hist.hi)


def entropy_range(hist: Histogram, scheme: QuantScheme) -> tuple[float, float]:
    """(0, t) for a non-negative tensor, (-t, t) within the observed min/max otherwise, t
    being :func:`entropy_threshold`. ``hist`` counts ``|x|`` (``absolute=True``)."""
    if hist.n == 0:
        return 0.0, 0.0
    nonnegative = hist.raw_lo >= 0
    t = entropy_threshold(hist, entropy_levels(nonnegative, scheme))
    if nonnegative:
        return 0.0, float(t)
    return float(max(-t, hist.raw_lo)), float(min(t, hist.raw_hi))
