"""Numbers behind the per-layer findings (plain numpy on tensors the engine captured):
streaming tensor statistics and histograms, clipping search, weight-range statistics, and
exact quantize-dequantize of captured values.

>>> acc = TensorStats(lo=-1.0, hi=3.0)
>>> acc.add(np.array([[0.0, 1.0], [2.0, -1.0]], np.float32))
>>> acc.summary()["max"]
2.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..quant import QuantScheme
from ..quant.encodings import activation_params, quantize, weight_params
from ..stats import snr_db

#: Fine histogram bins over a tensor's calibrated range (clipping search, percentiles).
FINE_BINS = 2048
#: Bins of the histograms kept as evidence (plots).
REPORT_BINS = 128
#: At most this many values of one tensor per batch enter its histogram (a strided sample):
#: np.histogram runs at ~100 M values/s here; EfficientNet-Lite0 has 7 M activation values
#: per image. Min/max, sums and per-channel statistics always use every value.
HISTOGRAM_SAMPLE = 1 << 16
#: Tail fractions tried as clipping points (each side).
CLIP_TAILS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
PERCENTILES = (0.01, 0.1, 1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0, 99.9, 99.99)


#: Largest and smallest values each tensor keeps exactly.
EXTREMES = 4096


def _keep_largest(kept: np.ndarray, values: np.ndarray, k: int = EXTREMES) -> np.ndarray:
    """The ``k`` largest of ``kept`` and ``values`` (one pass over ``values`` once ``k`` are
    kept: only values above the smallest kept one are looked at)."""
    new = values if kept.size < k else values[values > kept.min()]
    if new.size == 0:
        return kept
    if new.size > k:
        new = np.partition(new, new.size - k)[-k:]
    merged = np.concatenate([kept, new])
    return merged if merged.size <= k else np.partition(merged, merged.size - k)[-k:]


def _rows(x: np.ndarray) -> np.ndarray:
    """``x`` as rows of one channel of one image: [N·C, rest] (a single row below 2 dims)."""
    lead = x.shape[0] * x.shape[1] if x.ndim >= 2 else 1
    return x.reshape(lead, -1)


def sum_sq(x: np.ndarray) -> float:
    """Σ x² of a float32 array without a float64 copy (row-wise float32, then float64)."""
    rows = _rows(np.ascontiguousarray(x, dtype=np.float32))
    return float(np.einsum("ij,ij->i", rows, rows).astype(np.float64).sum())


def qdq(x: np.ndarray, lo: float, hi: float, scheme: QuantScheme) -> np.ndarray:
    """Quantize-dequantize ``x`` with the per-tensor parameters of range (lo, hi), exactly as
    the QDQ model does (round half to even, saturation)."""
    scale, zp = activation_params(lo, hi, scheme)
    q = quantize(x, np.asarray(scale), zp, scheme.qmin, scheme.qmax)
    return ((q - zp) * np.float64(scale)).astype(np.float32)


@dataclass
class TensorStats:
    """Streaming statistics of one tensor over batches: exact min/max/sums, per-channel
    (axis 1) min/max/mean/std, exact zeros, and a histogram over the fixed range
    [min(lo, 0), max(hi, 0)] (values outside are counted as under/over)."""

    lo: float
    hi: float
    bins: int = FINE_BINS
    per_channel: bool = True
    count: int = 0
    zeros: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf
    hist: np.ndarray = field(default=None)  # type: ignore[assignment]
    under: int = 0
    over: int = 0
    sampled: int = 0
    ch_min: np.ndarray | None = None
    ch_max: np.ndarray | None = None
    ch_sum: np.ndarray | None = None
    ch_sq: np.ndarray | None = None
    ch_count: int = 0
    #: the EXTREMES largest and smallest values seen, exactly (the sampled histogram misses
    #: rare outliers, which are what clipping is about)
    top: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    bottom: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __post_init__(self) -> None:
        self.lo, self.hi = min(float(self.lo), 0.0), max(float(self.hi), 0.0)
        if self.hi <= self.lo:
            self.hi = self.lo + 1.0
        if self.hist is None:
            self.hist = np.zeros(self.bins, dtype=np.int64)
        self._scale = np.float32(self.bins / (self.hi - self.lo))

    def add(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.size == 0:
            return
        flat = x.reshape(-1)
        self.count += flat.size
        self.zeros += flat.size - int(np.count_nonzero(flat))
        # Row-wise float32 reductions (rows of one channel of one image: short enough to be
        # exact in float32), summed in float64: no float64 copy of a large tensor.
        rows = _rows(x)
        row_sum = rows.sum(axis=1, dtype=np.float32).astype(np.float64)
        row_sq = np.einsum("ij,ij->i", rows, rows).astype(np.float64)
        self.total += float(row_sum.sum())
        self.total_sq += float(row_sq.sum())
        if self.per_channel and x.ndim >= 2:
            n, c = x.shape[0], x.shape[1]
            per = x.reshape(n, c, -1)
            mn, mx = per.min(axis=2).min(axis=0), per.max(axis=2).max(axis=0)
            s, sq = row_sum.reshape(n, c).sum(axis=0), row_sq.reshape(n, c).sum(axis=0)
            if self.ch_min is None or self.ch_min.shape[0] != c:
                self.ch_min, self.ch_max, self.ch_sum, self.ch_sq = mn, mx, s, sq
            else:
                self.ch_min = np.minimum(self.ch_min, mn)
                self.ch_max = np.maximum(self.ch_max, mx)
                self.ch_sum = self.ch_sum + s  # type: ignore[operator]
                self.ch_sq = self.ch_sq + sq  # type: ignore[operator]
            self.ch_count += per.shape[0] * per.shape[2]
            self.minimum = min(self.minimum, float(mn.min()))
            self.maximum = max(self.maximum, float(mx.max()))
        else:
            self.minimum = min(self.minimum, float(flat.min()))
            self.maximum = max(self.maximum, float(flat.max()))
        self.top = _keep_largest(self.top, flat)
        self.bottom = -_keep_largest(-self.bottom, -flat)
        step = max(1, flat.size // HISTOGRAM_SAMPLE)
        sample = flat[::step]
        self.sampled += sample.size
        # np.histogram's own overhead dominates on small tensors: bin indices + bincount
        # (bins + under + over), the same uniform bins (the top edge belongs to the last bin).
        idx = np.clip(((sample - self.lo) * self._scale).astype(np.int64), 0, self.bins - 1)
        idx[sample < self.lo] = self.bins
        idx[sample > self.hi] = self.bins + 1
        counts = np.bincount(idx, minlength=self.bins + 2)
        self.hist += counts[: self.bins]
        self.under += int(counts[self.bins])
        self.over += int(counts[self.bins + 1])

    # --- derived ---------------------------------------------------------------------------
    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.bins + 1)

    def percentile(self, q: float) -> float:
        """Percentile: exact in the tails the stored extremes cover, else at bin resolution
        from the sampled histogram."""
        above = (1 - q / 100.0) * self.count  # values above the percentile
        if 0 <= above < self.top.size - 1:
            return float(np.sort(self.top)[::-1][int(above)])
        below = q / 100.0 * self.count
        if 0 <= below < self.bottom.size - 1:
            return float(np.sort(self.bottom)[int(below)])
        counts = np.concatenate([[self.under], self.hist, [self.over]])
        cdf = np.cumsum(counts) / max(counts.sum(), 1)
        k = int(np.searchsorted(cdf, q / 100.0))
        if k == 0:
            return self.minimum
        if k > self.bins:
            return self.maximum
        return float(np.clip(self.edges[k], self.minimum, self.maximum))

    def channel_mean_std(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self.ch_sum is None or self.ch_count == 0:
            return None
        mean = self.ch_sum / self.ch_count
        var = np.maximum(self.ch_sq / self.ch_count - mean**2, 0.0)  # type: ignore[operator]
        return mean, np.sqrt(var)

    def report_histogram(self) -> dict[str, Any]:
        """The histogram coarsened to :data:`REPORT_BINS` bins (for plots)."""
        factor = max(1, self.bins // REPORT_BINS)
        counts = self.hist.reshape(-1, factor).sum(axis=1)
        return {
            "edges": self.edges[::factor].tolist(),
            "counts": counts.tolist(),
            "under": self.under,
            "over": self.over,
            "sampled_values": self.sampled,
        }

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "count": self.count,
            "min": self.minimum,
            "max": self.maximum,
            "mean": self.total / max(self.count, 1),
            "std": math.sqrt(
                max(self.total_sq / max(self.count, 1) - (self.total / max(self.count, 1)) ** 2, 0)
            ),
            "zero_fraction": self.zeros / max(self.count, 1),
            "percentiles": {str(p): self.percentile(p) for p in PERCENTILES},
        }
        if self.ch_min is not None:
            out["channel_min"] = self.ch_min.astype(float).tolist()
            out["channel_max"] = self.ch_max.astype(float).tolist()  # type: ignore[union-attr]
        return out


@dataclass(frozen=True)
class ClipChoice:
    """A clipping range for one tensor and its estimated on-tensor SNR."""

    lo: float
    hi: float
    tail: float | None  # the tail fraction cut on each side (None: the full range)
    snr_db: float


def estimated_snr(stats: TensorStats, lo: float, hi: float, scheme: QuantScheme) -> float:
    """On-tensor SNR (dB) of quantizing the histogrammed values with range (lo, hi):
    uniform rounding noise step²/12 for non-zero values inside (zero is exact), the squared
    distance to the bound for values outside (bin centres). An estimate to rank clipping
    choices; the gain of the chosen one is then measured by running the model."""
    scale, _ = activation_params(lo, hi, scheme)
    lo_q, hi_q = min(lo, 0.0), max(hi, 0.0)
    centres = (stats.edges[:-1] + stats.edges[1:]) / 2
    n = stats.hist.astype(np.float64)
    sampled = max(float(n.sum() + stats.under + stats.over), 1.0)
    count = max(stats.count, 1)
    fraction_zero = stats.zeros / count
    inside = (centres >= lo_q) & (centres <= hi_q)
    inside_fraction = max(float(n[inside].sum()) / sampled - fraction_zero, 0.0)
    round_mse = inside_fraction * float(scale) ** 2 / 12

    def side(extremes: np.ndarray, bound: float, beyond: np.ndarray) -> float:
        """Σ clipping error² per value beyond ``bound``: exact from the stored extremes when
        they hold every value beyond it, else from the histogram (bin centres)."""
        cut = extremes[beyond]
        if cut.size < extremes.size or stats.count <= extremes.size:
            return float(np.square(cut.astype(np.float64) - bound).sum()) / count
        return -1.0

    hi_mse = side(stats.top, hi_q, stats.top > hi_q)
    lo_mse = side(stats.bottom, lo_q, stats.bottom < lo_q)
    if hi_mse < 0 or lo_mse < 0:  # more values beyond than stored: the histogram's estimate
        err = np.where(centres > hi_q, (centres - hi_q) ** 2, 0.0)
        err_lo = np.where(centres < lo_q, (lo_q - centres) ** 2, 0.0)
        edge = stats.over * max(stats.hi - hi_q, 0) ** 2, stats.under * max(lo_q - stats.lo, 0) ** 2
        if hi_mse < 0:
            hi_mse = (float((n * err).sum()) + edge[0]) / sampled
        if lo_mse < 0:
            lo_mse = (float((n * err_lo).sum()) + edge[1]) / sampled
    power = stats.total_sq / count
    return snr_db(power, hi_mse + lo_mse + round_mse)


def tail_range(stats: TensorStats, tail: float) -> tuple[float, float]:
    """The range that cuts ``tail`` of the values on each side (a tensor that never goes
    below 0 keeps 0 as its lower bound); always contains 0, as quantization ranges do."""
    hi = stats.percentile(100 * (1 - tail))
    lo = stats.percentile(100 * tail) if stats.minimum < 0 else min(stats.lo, 0.0)
    return min(lo, 0.0), max(hi, 0.0)


def clip_choice(stats: TensorStats, scheme: QuantScheme, tail: float) -> ClipChoice:
    lo, hi = tail_range(stats, tail)
    return ClipChoice(lo, hi, tail, estimated_snr(stats, lo, hi, scheme))


def wasted_ratio(stats: TensorStats, tail: float = 1e-4) -> float:
    """Calibrated range width over the width that holds all but ``tail`` of the values on
    each side: 4 means two bits of the grid serve 0.02% of the values."""
    lo, hi = tail_range(stats, tail)
    return (stats.hi - stats.lo) / (hi - lo) if hi > lo else 1.0


def best_clip(stats: TensorStats, scheme: QuantScheme) -> tuple[ClipChoice, ClipChoice]:
    """(full range, best clipped range) by estimated on-tensor SNR over the tails in
    :data:`CLIP_TAILS`."""
    full = ClipChoice(stats.lo, stats.hi, None, estimated_snr(stats, stats.lo, stats.hi, scheme))
    best = full
    for tail in CLIP_TAILS:
        choice = clip_choice(stats, scheme, tail)
        if choice.hi - choice.lo <= 0 or (choice.lo, choice.hi) == (full.lo, full.hi):
            continue
        if choice.snr_db > best.snr_db:
            best = choice
    return full, best


def weight_range_stats(w: np.ndarray, axis: int | None, scheme: QuantScheme) -> dict[str, Any]:
    """Per-output-channel weight ranges and what per-tensor vs per-channel symmetric
    quantization does to them (exact numpy quantization, as the QDQ builder does)."""
    w = w.astype(np.float32)
    if axis is None or w.ndim < 2:
        return {}
    per = np.moveaxis(np.abs(w), axis, 0).reshape(w.shape[axis], -1)
    amax = per.max(axis=1).astype(np.float64)
    pt_scale = weight_params(w, scheme, None)
    pc_scale = weight_params(w, scheme, axis)
    q_pt = quantize(w, pt_scale, 0, scheme.qmin, scheme.qmax) * pt_scale.astype(np.float64)
    shape = [1] * w.ndim
    shape[axis] = -1
    q_pc = quantize(w, pc_scale, 0, scheme.qmin, scheme.qmax, axis) * pc_scale.reshape(shape)
    power = float(np.square(w, dtype=np.float64).sum())
    err_pt = np.moveaxis(np.square(w - q_pt), axis, 0).reshape(w.shape[axis], -1).sum(axis=1)
    err_pc = np.moveaxis(np.square(w - q_pc), axis, 0).reshape(w.shape[axis], -1).sum(axis=1)
    ch_power = np.moveaxis(np.square(w.astype(np.float64)), axis, 0)
    ch_power = ch_power.reshape(w.shape[axis], -1).sum(axis=1)
    levels = amax / float(pt_scale)  # quantization steps each channel spans under per-tensor
    live = amax > 0
    median = float(np.median(amax[live])) if live.any() else 0.0
    channel_snr = [snr_db(float(p), float(e)) for p, e in zip(ch_power, err_pt, strict=True)]
    channel_snr_pc = [snr_db(float(p), float(e)) for p, e in zip(ch_power, err_pc, strict=True)]
    # what the typical channel loses to the shared scale (the whole-tensor SNR is dominated
    # by the large channels and hides the small ones)
    loss = np.array(channel_snr_pc)[live] - np.array(channel_snr)[live]
    return {
        "channels": int(w.shape[axis]),
        "channel_absmax": amax.tolist(),
        "max_over_median": float(amax.max() / median) if median > 0 else None,
        "channel_levels_per_tensor": levels.tolist(),
        "channels_below_16_levels": int(np.count_nonzero(live & (levels < 16))),
        "snr_per_tensor_db": snr_db(power, float(np.square(w - q_pt).sum())),
        "snr_per_channel_db": snr_db(power, float(np.square(w - q_pc).sum())),
        "channel_snr_per_tensor_db": channel_snr,
        "median_channel_snr_per_tensor_db": float(np.median(channel_snr)),
        "median_channel_snr_per_channel_db": float(np.median(channel_snr_pc)),
        "median_channel_loss_db": float(np.median(loss)) if loss.size else 0.0,
    }


def iqr_low_outliers(values: np.ndarray, k: float = 1.5) -> tuple[np.ndarray, float]:
    """Indices of values below Q1 − k·IQR, and that fence."""
    finite = values[np.isfinite(values)]
    if finite.size < 4:
        return np.zeros(0, dtype=np.int64), -math.inf
    q1, q3 = np.percentile(finite, [25, 75])
    fence = float(q1 - k * (q3 - q1))
    return np.flatnonzero(values < fence), fence
