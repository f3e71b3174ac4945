"""Confidence intervals and paired tests over per-image results (seeded, reproducible), and
the one signal-to-noise ratio (:func:`snr_db`) of checks, engine and remedies.

>>> a = np.array([1.0] * 90 + [0.0] * 10)
>>> lo, hi = bootstrap_ci(a)
>>> lo < 90.0 < hi
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import overload

import numpy as np
from scipy import stats as sps

N_BOOTSTRAP = 2000

#: The SNR (dB) of a difference with no measurable noise, and the bound of every SNR: beyond
#: it a difference is float round-off. Finite, so that findings.json (JSON has no Infinity)
#: always holds a number.
MAX_SNR_DB = 200.0


@overload
def snr_db(signal: float, noise: float) -> float: ...
@overload
def snr_db(signal: np.ndarray, noise: np.ndarray) -> np.ndarray: ...
def snr_db(signal: float | np.ndarray, noise: float | np.ndarray) -> float | np.ndarray:
    """Signal-to-noise ratio ``10·log10(signal / noise)`` in dB of powers (sums or means of
    squares), clamped to ``[-MAX_SNR_DB, MAX_SNR_DB]``: no noise (``noise <= 0``) gives
    :data:`MAX_SNR_DB` (identical tensors, even all-zero ones), noise without signal
    (``signal <= 0 < noise``) gives ``-MAX_SNR_DB``; NaN stays NaN (a broken output is
    not hidden). Arrays: element-wise.

    >>> snr_db(100.0, 1.0), snr_db(5.0, 0.0), snr_db(0.0, 1.0)
    (20.0, 200.0, -200.0)
    """
    s = np.asarray(signal, dtype=np.float64)
    n = np.asarray(noise, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        db = 10.0 * np.log10(s / n)
    db = np.where(n <= 0, MAX_SNR_DB, np.where(s <= 0, -MAX_SNR_DB, db))
    db = np.clip(db, -MAX_SNR_DB, MAX_SNR_DB)
    return float(db) if db.ndim == 0 else db


def snr_db_between(reference: np.ndarray, test: np.ndarray) -> float:
    """:func:`snr_db` of ``test`` against ``reference`` over all their values (float64 sums):
    ``Σ reference² / Σ (test - reference)²``."""
    r = np.asarray(reference, dtype=np.float64)
    d = np.asarray(test, dtype=np.float64) - r
    return snr_db(float(np.vdot(r, r)), float(np.vdot(d, d)))


#: resampled image indices drawn at once: the n_boot x n index array in chunks of rows (one
#: array of 1000 x 50,000 int64 is 0.4 GB); the same numbers as one draw (same stream)
CHUNK_INDICES = 1 << 21


def _resampled(
    n: int, n_boot: int, seed: int, statistic: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """``statistic`` of each of ``n_boot`` seeded resamples of ``n`` images (one value per
    resample), computed chunk by chunk."""
    rng = np.random.default_rng(seed)
    rows = max(1, CHUNK_INDICES // max(n, 1))
    parts = []
    for start in range(0, n_boot, rows):
        idx = rng.integers(0, n, size=(min(rows, n_boot - start), n))
        parts.append(np.asarray(statistic(idx)))
    return np.concatenate(parts)


def bootstrap_ci(
    per_image: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of ``statistic`` (default: the mean in percent) over images."""
    n = len(per_image)
    if n == 0:
        return (float("nan"), float("nan"))
    stat = statistic or (lambda idx: per_image[idx].mean(axis=-1) * 100.0)  # noqa: E731
    values = _resampled(n, n_boot, seed, stat)
    a = (1 - level) / 2
    return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))


@dataclass(frozen=True)
class PairedDifference:
    """``b - a`` over the same images with its paired-bootstrap CI (percentage points)."""

    difference: float
    ci95: tuple[float, float]
    n: int
    p_value: float = float("nan")  # two-sided: how often the resampled difference crosses 0


def paired_bootstrap(
    a: Callable[[np.ndarray], np.ndarray],
    b: Callable[[np.ndarray], np.ndarray],
    n: int,
    point: float,
    n_boot: int = N_BOOTSTRAP,
    seed: int = 0,
) -> PairedDifference:
    """Resample images once and evaluate both contexts on the same resample."""
    if n == 0:
        return PairedDifference(float("nan"), (float("nan"), float("nan")), 0)
    d = _resampled(n, n_boot, seed, lambda idx: b(idx) - a(idx))
    ci = (float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975)))
    p = min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean()) + 1.0 / n_boot)
    return PairedDifference(point, ci, n, float(p))


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test: ``only_a`` images right only under a, ``only_b`` only under b."""

    only_a: int
    only_b: int
    p_value: float


def mcnemar_exact(a_correct: np.ndarray, b_correct: np.ndarray) -> McNemar:
    a, b = a_correct.astype(bool), b_correct.astype(bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(sps.binomtest(only_a, discordant, 0.5).pvalue)
    return McNemar(only_a, only_b, p)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): a family of tests whose
    smallest p is multiplied by their number, the next by one less, kept monotone.

    >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
    [0.03, 0.06, 0.06]
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
