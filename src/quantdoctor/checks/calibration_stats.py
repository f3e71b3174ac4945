"""Statistics behind the calibration-set checks: image hashes, flat/noise-like images, feature
distances and two-sample tests. Plain numpy/scipy on arrays; no model is run here.

>>> px = np.zeros((2, 16, 16, 3), np.uint8)
>>> exact_hashes(px)[0] == exact_hashes(px)[1]
True
>>> pixel_std(px).tolist()
[0.0, 0.0]
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import stats as sps

from ..quant.encodings import activation_params
from ..quant.target import QuantScheme
from ..stats import snr_db

#: Images per chunk in the per-image statistics: bounds the float copies they make.
CHUNK = 64


def _per_chunk(fn: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray) -> np.ndarray:
    """``fn`` over chunks of images, concatenated (memory bounded by the chunk size)."""
    if len(pixels) == 0:
        return np.zeros(0)
    return np.concatenate([fn(pixels[i : i + CHUNK]) for i in range(0, len(pixels), CHUNK)])


# --- duplicates -------------------------------------------------------------------------------


def exact_hashes(pixels: np.ndarray) -> list[str]:
    """SHA-1 of each image's decoded (and resized) pixels: equal pixels, equal hash, whatever
    the file name or container format."""
    return [hashlib.sha1(np.ascontiguousarray(p).tobytes()).hexdigest() for p in pixels]


def perceptual_hashes(pixels: np.ndarray, hash_size: int = 8) -> np.ndarray:
    """DCT perceptual hash (``imagehash.phash``) of each image as a bool matrix [N, bits]."""
    import imagehash  # imported lazily: only this check needs it

    return np.stack(
        [imagehash.phash(Image.fromarray(p), hash_size=hash_size).hash.ravel() for p in pixels]
    )


def hamming_matrix(bits: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances [N, N] between rows of a bool matrix."""
    b = bits.astype(np.float32)
    return np.rint(b @ (1.0 - b).T + (1.0 - b) @ b.T).astype(np.int64)


def cosine_matrix(features: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity [N, N] of feature rows (a zero row is similar to nothing)."""
    f = features.astype(np.float64)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    f = np.divide(f, norm, out=np.zeros_like(f), where=norm > 0)
    return f @ f.T


def connected_groups(n: int, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Union-find: groups (sorted, size ≥ 2) of items linked by ``pairs``, largest first."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    found = [g for g in groups.values() if len(g) > 1]
    return sorted(found, key=lambda g: (-len(g), g[0]))


# --- flat and noise-like images ---------------------------------------------------------------


def pixel_std(pixels: np.ndarray) -> np.ndarray:
    """Per image, the largest per-channel standard deviation of its pixels (0..255 scale): 0
    for a single-colour image."""

    def part(p: np.ndarray) -> np.ndarray:
        x = p.reshape(len(p), -1, p.shape[-1]).astype(np.float32)
        return x.std(axis=1).max(axis=1).astype(np.float64)

    return _per_chunk(part, pixels)


def dominant_fraction(pixels: np.ndarray, tolerance: int = 2) -> np.ndarray:
    """Per image, the fraction of pixels within ``tolerance`` (per channel) of its median
    colour: near 1 for a blank image with a little text or a thin border."""

    def part(p: np.ndarray) -> np.ndarray:
        x = p.reshape(len(p), -1, p.shape[-1]).astype(np.int16)
        med = np.median(x, axis=1, keepdims=True)
        return (np.abs(x - med) <= tolerance).all(axis=2).mean(axis=1)

    return _per_chunk(part, pixels)


def neighbour_correlation(pixels: np.ndarray) -> np.ndarray:
    """Per image, the correlation of each grey level with its right and lower neighbours.

    Neighbouring pixels of a photograph are strongly correlated (measured here: ≥ 0.59 on every
    CIFAR-10 and ImageNet-sample image, ≥ 0.29 on the 8x8 digits); independent noise is not
    (about 0; 0.15 after the bicubic resize of Lite0's preprocessing). NaN for a flat image."""

    def part(p: np.ndarray) -> np.ndarray:
        g = p.astype(np.float32).mean(axis=3)
        g -= g.mean(axis=(1, 2), keepdims=True)
        var = (g**2).mean(axis=(1, 2))
        right = (g[:, :, 1:] * g[:, :, :-1]).mean(axis=(1, 2))
        down = (g[:, 1:, :] * g[:, :-1, :]).mean(axis=(1, 2))
        out = np.full(len(p), np.nan)
        ok = var > 1e-6
        out[ok] = ((right + down)[ok] / 2.0 / var[ok]).astype(np.float64)
        return out

    return _per_chunk(part, pixels)


def spectral_slope(pixels: np.ndarray, min_side: int = 16) -> np.ndarray:
    """Per image, the log-log slope of the radially averaged power spectrum of its grey
    levels (Hann-windowed), fitted from 2 cycles per image to 3/4 of the Nyquist frequency.

    Natural images fall off like 1/f^2 (measured here: median -2.5 on the ImageNet sample and
    -2.9 on CIFAR-10, 99% of images below -1.4), white noise is flat (about 0). NaN for images
    smaller than ``min_side`` pixels or without any variation, where the slope means nothing."""
    n, h, w = pixels.shape[:3]
    out = np.full(n, np.nan)
    side = min(h, w)
    if side < min_side:
        return out
    # A centred square crop keeps the radial frequency axis the same in both directions.
    y0, x0 = (h - side) // 2, (w - side) // 2
    window = np.outer(np.hanning(side), np.hanning(side))
    fy = np.fft.fftfreq(side)[:, None]
    fx = np.fft.rfftfreq(side)[None, :]
    radius = np.rint(np.sqrt(fy**2 + fx**2) * side).astype(np.int64)
    r_max = int(side // 2 * 0.75)
    band = np.arange(2, r_max + 1)
    counts = np.bincount(radius.ravel(), minlength=side)[band]
    for start in range(0, n, CHUNK):  # chunks bound the FFT's memory
        grey = pixels[start : start + CHUNK, y0 : y0 + side, x0 : x0 + side].astype(np.float64)
        grey = grey.mean(axis=3)
        grey -= grey.mean(axis=(1, 2), keepdims=True)
        flat = grey.std(axis=(1, 2)) < 1e-3  # no variation: the slope would fit rounding noise
        power = np.abs(np.fft.rfft2(grey * window)) ** 2
        for k, p in enumerate(power):
            radial = np.bincount(radius.ravel(), weights=p.ravel(), minlength=side)[band] / counts
            if flat[k] or not np.all(radial > 0):
                continue
            out[start + k] = np.polyfit(np.log(band), np.log(radial), 1)[0]
    return out


# --- feature space ----------------------------------------------------------------------------


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances [len(a), len(b)] (float64)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    sq = (a64**2).sum(1)[:, None] + (b64**2).sum(1)[None, :] - 2.0 * a64 @ b64.T
    return np.sqrt(np.maximum(sq, 0.0))


@dataclass(frozen=True)
class EnergyTest:
    """Energy distance between two samples with its permutation-test p-value.

    ``coefficient`` is Székely & Rizzo's energy coefficient E / (2·E|X−Y|): 0 when the two
    samples come from one distribution, towards 1 when they do not overlap at all. It does not
    grow with the sample size, so it serves as the effect size next to the p-value."""

    distance: float
    coefficient: float
    p_value: float
    permutations: int
    n_x: int
    n_y: int


def _energy_from_sums(
    sxy: np.ndarray, sxx: np.ndarray, syy: np.ndarray, nx: int, ny: int
) -> tuple[np.ndarray, np.ndarray]:
    """Energy distance and E|X-Y| from the sums of between- and within-sample distances."""
    # U-statistics: the zero diagonal of D is excluded from the within-sample means.
    exy = sxy / (nx * ny)
    exx = sxx / (nx * (nx - 1))
    eyy = syy / (ny * (ny - 1))
    return 2.0 * exy - exx - eyy, exy


def energy_test(
    x: np.ndarray, y: np.ndarray, permutations: int = 1000, seed: int = 0
) -> EnergyTest:
    """Energy distance between samples ``x`` [n, d] and ``y`` [m, d]; the p-value is the
    fraction of random relabellings of the pooled sample with a distance at least as large."""
    nx, ny = len(x), len(y)
    if nx < 2 or ny < 2:
        return EnergyTest(float("nan"), float("nan"), float("nan"), 0, nx, ny)
    z = np.concatenate([x, y]).astype(np.float64)
    d = pairwise_distances(z, z)
    n = nx + ny
    in_x = np.zeros(n)
    in_x[:nx] = 1.0
    total = d.sum()

    def stat(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dm = d @ masks.T  # [n, P]: for each point, summed distance to the X points
        sxx = (masks.T * dm).sum(axis=0)
        row_x = dm.sum(axis=0)  # Σ_{i∈X} Σ_j d_ij == Σ_j Σ_{i∈X} d_ij
        sxy = row_x - sxx
        syy = total - sxx - 2.0 * sxy
        return _energy_from_sums(sxy, sxx, syy, nx, ny)

    observed, exy = stat(in_x[None, :])
    rng = np.random.default_rng(seed)
    null = []
    for start in range(0, permutations, 250):  # chunks bound memory: [n, 250] at a time
        k = min(250, permutations - start)
        masks = np.zeros((k, n))
        for row in range(k):
            masks[row, rng.permutation(n)[:nx]] = 1.0
        null.append(stat(masks)[0])
    null_stats = np.concatenate(null) if null else np.zeros(0)
    p = (1.0 + float((null_stats >= observed[0] - 1e-12).sum())) / (1.0 + len(null_stats))
    coef = float(observed[0] / (2.0 * exy[0])) if exy[0] > 0 else 0.0
    return EnergyTest(float(observed[0]), coef, p, len(null_stats), nx, ny)


def nearest_distances(x: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ``x``'s distance to its nearest row of ``ref``, and each ``ref`` row's
    leave-one-out nearest distance within ``ref`` (the scale of "normal" distances)."""
    to_ref = pairwise_distances(x, ref).min(axis=1)
    within = pairwise_distances(ref, ref)
    np.fill_diagonal(within, np.inf)
    return to_ref, within.min(axis=1)


# --- input statistics -------------------------------------------------------------------------


def image_statistics(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: mean and standard deviation of each RGB channel (0..255 scale)."""

    def part(p: np.ndarray) -> np.ndarray:
        x = p.reshape(len(p), -1, p.shape[-1]).astype(np.float32)
        return np.concatenate([x.mean(axis=1), x.std(axis=1)], axis=1).astype(np.float64)

    stats = _per_chunk(part, pixels).reshape(len(pixels), -1)
    channels = pixels.shape[-1]
    out: dict[str, np.ndarray] = {}
    for c, name in enumerate("RGB"[:channels]):
        out[f"mean_{name}"] = stats[:, c]
        out[f"std_{name}"] = stats[:, channels + c]
    return out


def compare_samples(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Two-sample comparison of a scalar statistic: medians, the shift in units of ``b``'s
    standard deviation and the Kolmogorov-Smirnov test."""
    ks = sps.ks_2samp(a, b)
    spread = float(np.std(b)) or 1.0
    return {
        "calibration_median": float(np.median(a)),
        "evaluation_median": float(np.median(b)),
        "shift_in_std": float((np.mean(a) - np.mean(b)) / spread),
        "ks_statistic": float(ks.statistic),
        "ks_p_value": float(ks.pvalue),
    }


# --- range coverage ---------------------------------------------------------------------------


@dataclass
class CoverageAccumulator:
    """Streams one tensor's evaluation values against its calibrated range and the target's
    quantizer: how many values fall outside the range, the clipping noise they cause and the
    rounding noise inside it (estimated on every ``stride``-th value: rounding noise is dense
    and smooth, clipping noise is rare and heavy, so the latter is summed exactly)."""

    lo: float
    hi: float
    scheme: QuantScheme
    stride: int = 7
    count: int = 0
    below: int = 0
    above: int = 0
    signal: float = 0.0
    clip_noise: float = 0.0
    round_noise: float = 0.0
    eval_min: float = np.inf
    eval_max: float = -np.inf

    def __post_init__(self) -> None:
        scale, zp = activation_params(self.lo, self.hi, self.scheme)
        self.scale, self.zero_point = float(scale), zp
        # The quantizer's representable interval: the calibrated range widened to include 0.
        self.q_lo = (self.scheme.qmin - zp) * self.scale
        self.q_hi = (self.scheme.qmax - zp) * self.scale

    def add(self, x: np.ndarray) -> None:
        v = x.reshape(-1)
        if v.size == 0:
            return
        self.count += v.size
        v_min, v_max = float(v.min()), float(v.max())
        self.eval_min, self.eval_max = min(self.eval_min, v_min), max(self.eval_max, v_max)
        self.signal += float(np.dot(v, v))
        # A value is clipped when it rounds beyond the end of the grid (more than half a step
        # outside); masks are built only when something lies outside: most tensors are covered.
        top, bottom = self.q_hi + self.scale / 2, self.q_lo - self.scale / 2
        if v_max > top:
            over = v[v > top].astype(np.float64) - self.q_hi
            self.above += over.size
            self.clip_noise += float(np.dot(over, over))
        if v_min < bottom:
            under = self.q_lo - v[v < bottom].astype(np.float64)
            self.below += under.size
            self.clip_noise += float(np.dot(under, under))
        sample = np.clip(v[:: self.stride], self.q_lo, self.q_hi)
        scale = np.float32(self.scale)
        err = sample - np.rint(sample / scale) * scale
        self.round_noise += float(np.dot(err, err)) * (v.size / sample.size)

    def summary(self) -> dict[str, float | int]:
        """Fractions outside the range, SNR with and without the clipping (dB) and how much
        wider the calibrated range is than the evaluation values need."""
        n = max(self.count, 1)
        snr = snr_db(self.signal, self.clip_noise + self.round_noise)
        snr_unclipped = snr_db(self.signal, self.round_noise)
        eval_width = max(self.eval_max, 0.0) - min(self.eval_min, 0.0) if self.count else 0.0
        cal_width = self.q_hi - self.q_lo
        return {
            "calibrated_range": [self.lo, self.hi],
            "evaluation_range": [self.eval_min, self.eval_max] if self.count else [0.0, 0.0],
            "values": self.count,
            "fraction_outside": (self.below + self.above) / n,
            "fraction_below": self.below / n,
            "fraction_above": self.above / n,
            "snr_db": snr,
            "snr_without_clipping_db": snr_unclipped,
            "clipping_cost_db": snr_unclipped - snr,
            "range_ratio": cal_width / eval_width if eval_width > 0 else float("inf"),
        }
