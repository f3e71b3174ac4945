"""Calibration observers (quantdoctor.quant.calibration): exact percentiles, MSE ranges,
TensorRT's entropy threshold, and the clip ranges of one tensor."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from quantdoctor.quant import calibration as cal
from quantdoctor.quant.calibration import (
    Histogram,
    calibrate,
    clip_range,
    iter_once,
    kl_divergences,
)
from quantdoctor.quant.encodings import activation_params, quantize
from quantdoctor.quant.target import QuantScheme

UINT8 = QuantScheme()
INT8_SYM = QuantScheme(bits=8, signed=True, symmetric=True)


def batches(x: np.ndarray, cuts: list[int], name: str = "t") -> list[dict[str, np.ndarray]]:
    edges = [0, *cuts, x.size]
    return [{name: x[a:b]} for a, b in zip(edges, edges[1:], strict=False)]


class Counted:
    """A source that counts its passes."""

    def __init__(self, data: list[dict[str, np.ndarray]]) -> None:
        self.data, self.passes = data, 0

    def __call__(self) -> list[dict[str, np.ndarray]]:
        self.passes += 1
        return self.data


def empirical_mse(x: np.ndarray, lo: float, hi: float, scheme: QuantScheme = UINT8) -> float:
    scale, zp = activation_params(lo, hi, scheme)
    q = quantize(x, scale, zp, scheme.qmin, scheme.qmax)
    return float(np.mean(((q - zp) * np.float64(scale) - x) ** 2))


# --- percentile -------------------------------------------------------------------------------
def test_percentile_is_exact_with_an_outlier_in_one_pass() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0, 6, 1_000_000), [6000.0]]).astype(np.float32)
    rng.shuffle(x)
    source = Counted(batches(x, list(range(100_000, 1_000_001, 100_000))))
    lo, hi = calibrate(source, ["t"], "percentile", 99.99)["t"]
    assert hi == pytest.approx(5.9994, rel=1e-4)
    assert hi == pytest.approx(float(np.percentile(x, 99.99)), rel=1e-6)
    assert hi == float(np.percentile(x, 99.99))  # bit for bit, in fact
    assert lo == float(x.min())  # never below 0: the min, as minmax
    assert source.passes == 1


@pytest.mark.parametrize("p", [99.99, 99.9, 99.0, 90.0, 75.0, 100.0, 50.5])
@pytest.mark.parametrize("cap", [1000, 1 << 16])
def test_percentile_equals_numpy_on_uneven_batches(
    p: float, cap: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cal, "TAIL_CAP", cap)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(300_001).astype(np.float32)
    data = batches(x, [1, 5, 17, 1000, 50_000, 200_000])
    for b in data:
        b["relu"] = np.maximum(b["t"], 0)
    source = Counted(data)
    got = calibrate(source, ["t", "relu"], "percentile", p)
    assert got["t"] == (float(np.percentile(x, 100 - p)), float(np.percentile(x, p)))
    relu = np.maximum(x, 0)
    assert got["relu"] == (0.0, float(np.percentile(relu, p)))
    lo_need, hi_need = cal._needed(x.size, p)
    assert source.passes == (1 if max(lo_need, hi_need) <= cap else 2)


def test_percentile_of_constant_and_empty_tensors() -> None:
    data = [
        {"c": np.full(700, 3.0, np.float32), "m": np.full(700, -2.0), "z": np.zeros(7), "e": []}
        for _ in range(3)
    ]
    data = [{k: np.asarray(v) for k, v in b.items()} for b in data]
    got = calibrate(lambda: data, ["c", "m", "z", "e"], "percentile", 99.9)
    assert got == {"c": (3.0, 3.0), "m": (-2.0, -2.0), "z": (0.0, 0.0), "e": (0.0, 0.0)}


def test_percentile_second_pass_needs_a_repeatable_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cal, "TAIL_CAP", 10)
    x = np.random.default_rng(2).standard_normal(10_000)
    with pytest.raises(RuntimeError, match="same batches"):
        calibrate(iter_once(iter(batches(x, [5000]))), ["t"], "percentile", 99.0)


def test_tails_hold_the_extremes_of_a_stream() -> None:
    rng = np.random.default_rng(3)
    tails = cal.Tails(50, 20)
    seen = []
    for size in [3, 100, 1, 0, 500, 49, 2000]:
        x = rng.standard_normal(size)
        seen.append(x)
        tails.add(x)
    all_x = np.sort(np.concatenate(seen))
    assert tails.n == all_x.size
    assert np.array_equal(np.sort(tails.high), all_x[-50:])
    assert np.array_equal(np.sort(tails.low), all_x[:20])


def test_exact_percentiles_equal_one_numpy_call_each() -> None:
    x = np.random.default_rng(4).standard_normal(12_345).astype(np.float32)
    for lo, hi in [(0.01, 99.99), (1.0, 99.0), (0.0, 100.0), (25.0, 75.0)]:
        assert cal.exact_percentiles(x, lo, hi) == (
            float(np.percentile(x, lo)),
            float(np.percentile(x, hi)),
        )


# --- histogram --------------------------------------------------------------------------------
def test_histogram_merges_exactly_and_keeps_its_resolution() -> None:
    rng = np.random.default_rng(5)
    h = Histogram(bins=256)
    seen = []
    for scale in [0.01, 0.1, 5.0, 1.0, 80.0]:  # the range grows: bins merge
        x = rng.standard_normal(5000) * scale + scale / 3
        x[:10] = 0.0
        seen.append(x)
        h.add(x)
    x = np.concatenate(seen)
    edges = (np.arange(h.start, h.start + h.counts.size + 1)) * h.width
    expected = np.histogram(x[x != 0], bins=edges)[0]
    assert np.array_equal(h.counts, expected)
    assert h.zeros == 50 and h.n == x.size and h.counts.sum() + h.zeros == x.size
    assert h.counts.size <= 256
    assert (max(x.max(), 0) - min(x.min(), 0)) / h.width > 256 / 2 - 2  # resolution kept


def test_squared_error_integral_is_exact() -> None:
    rng = np.random.default_rng(6)
    for _ in range(20):
        a = rng.uniform(-3, 3)
        b = a + rng.uniform(0.001, 2)
        s, low, high = rng.uniform(0.01, 0.5), -rng.uniform(0, 2), rng.uniform(0, 2)
        low, high = np.floor(low / s) * s, np.ceil(high / s) * s  # levels: multiples of s
        x = np.linspace(a, b, 2_000_001)
        err = np.clip(s * np.rint(x / s), low, high) - x
        got = cal._squared_error_integral(
            np.array([a]), np.array([b]), np.array([[s]]), np.array([[low]]), np.array([[high]])
        )[0, 0]
        assert got / (b - a) == pytest.approx(float(np.mean(err**2)), rel=1e-4, abs=1e-12)


def test_quant_params_match_activation_params() -> None:
    rng = np.random.default_rng(7)
    lo, hi = -rng.exponential(1, 50), rng.exponential(1, 50)
    lo[:5], hi[5:10] = 0.0, 0.0
    for scheme in [UINT8, INT8_SYM, QuantScheme(bits=16), QuantScheme(signed=True)]:
        scale, zp = cal.quant_params(lo, hi, scheme)
        for i in range(lo.size):
            s, z = activation_params(lo[i], hi[i], scheme)
            assert scale[i] == np.float64(s) and zp[i] == z


# --- mse --------------------------------------------------------------------------------------
def test_mse_beats_minmax_and_percentile_with_outliers() -> None:
    rng = np.random.default_rng(8)
    x = rng.standard_normal(1_000_000).astype(np.float32)
    x[rng.choice(x.size, 100, replace=False)] = 100.0  # 0.01 %
    source = Counted(batches(x, list(range(100_000, 1_000_000, 100_000))))
    ranges = {m: calibrate(source, ["t"], m)["t"] for m in ("minmax", "percentile", "mse")}
    assert source.passes == 3  # one each
    errors = {m: empirical_mse(x, *r) for m, r in ranges.items()}
    assert errors["mse"] < errors["minmax"] and errors["mse"] < errors["percentile"]
    # 0.01 % of outliers at 100 carry more energy than the rounding noise: the MSE-optimal
    # range keeps them (clipping them at 5 would cost 1e-4 * 95**2 = 0.9)
    assert 90 < ranges["mse"][1] < 100

    y = rng.standard_normal(1_000_000).astype(np.float32)
    y[0] = 100.0  # one outlier in a million: clipping pays
    ranges = {m: calibrate(lambda: [{"t": y}], ["t"], m)["t"] for m in ("minmax", "mse")}
    assert ranges["mse"][1] < 0.5 * ranges["minmax"][1]
    assert empirical_mse(y, *ranges["mse"]) < 0.5 * empirical_mse(y, *ranges["minmax"])


def test_mse_is_near_the_best_range_on_long_tailed_data() -> None:
    rng = np.random.default_rng(9)
    x = np.maximum(rng.laplace(size=200_000), 0).astype(np.float32)  # one-sided
    lo, hi = calibrate(lambda: batches(x, [50_000, 120_000]), ["t"], "mse")["t"]
    assert lo == float(x.min()) and hi < 0.97 * float(x.max())
    brute = min(empirical_mse(x, 0.0, h) for h in np.linspace(0.3, 1, 141) * float(x.max()))
    assert empirical_mse(x, lo, hi) <= brute * 1.003

    s = rng.laplace(size=200_000).astype(np.float32)  # two-sided: both bounds searched
    ranges = {
        m: calibrate(lambda: [{"t": s}], ["t"], m)["t"]
        for m in ("minmax", "percentile", "mse", "entropy")
    }
    errors = {m: empirical_mse(s, *r) for m, r in ranges.items()}
    assert errors["mse"] == min(errors.values())
    assert errors["mse"] < 0.8 * errors["minmax"]


def test_mse_stays_close_to_minmax_on_uniform_data() -> None:
    x = np.random.default_rng(10).uniform(0, 6, 500_000).astype(np.float32)
    lo, hi = calibrate(lambda: [{"t": x}], ["t"], "mse")["t"]
    assert lo == float(x.min()) and 0.99 * x.max() <= hi <= x.max()
    assert empirical_mse(x, lo, hi) <= empirical_mse(x, float(x.min()), float(x.max()))


def test_mse_of_constant_and_zero_tensors() -> None:
    data = [{"c": np.full(100, 3.0), "z": np.zeros(100), "n": np.full(100, -1.5)}]
    got = calibrate(lambda: data, ["c", "z", "n"], "mse")
    assert got["c"] == (3.0, 3.0) and got["z"] == (0.0, 0.0) and got["n"][0] == -1.5


def test_clip_range_mse_for_symmetric_weights() -> None:
    w = (np.random.default_rng(11).laplace(size=20_000) * 0.05).astype(np.float32)
    lo, hi = clip_range(w, "mse", None, INT8_SYM)
    amax = max(-lo, hi)  # what the symmetric scheme uses
    assert float(w.min()) <= lo < 0 < hi <= float(w.max())
    assert amax < 0.95 * float(np.abs(w).max())
    brute = min(
        empirical_mse(w, -a, a, INT8_SYM) for a in np.linspace(0.3, 1, 141) * np.abs(w).max()
    )
    assert empirical_mse(w, lo, hi, INT8_SYM) <= brute * 1.003


# --- entropy ----------------------------------------------------------------------------------
def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p, q = p / p.sum(), q / q.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.where(p > 0, p * np.log(p / q), 0.0).sum())


def tensorrt_divergences(calib_hist: np.ndarray, nbins: int, start_bin: int) -> np.ndarray:
    """pytorch_quantization.calib.histogram._compute_amax_entropy (stride 1), as written
    there: the divergence of every candidate."""
    bins = calib_hist.astype(np.float64)
    bins[0] = bins[1]
    divergences = []
    new_density_counts = np.zeros(nbins, dtype=np.float64)
    for i in range(start_bin, len(bins) + 1):
        new_density_counts.fill(0)
        space = np.linspace(0, i, num=nbins + 1)
        digitized_space = np.digitize(range(i), space) - 1
        digitized_space[bins[:i] == 0] = -1
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density_counts[digitized] += bins[idx]
        counter = Counter(digitized_space)
        for key, val in counter.items():
            if key != -1:
                new_density_counts[key] = new_density_counts[key] / val
        new_density = np.zeros(i, dtype=np.float64)
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density[idx] = new_density_counts[digitized]
        reference_density = np.array(bins[: len(digitized_space)])
        reference_density[-1] += np.sum(bins[i:])
        divergences.append(_kl(reference_density, new_density))
    return np.array(divergences)


@pytest.mark.parametrize("levels", [128, 256])
def test_entropy_divergences_match_tensorrt(levels: int) -> None:
    rng = np.random.default_rng(12)
    for trial in range(3):
        n = int(rng.integers(300, 420))
        hist = np.histogram(np.abs(rng.standard_t(2 + trial, 30_000)), bins=n)[0]
        if trial == 1:
            hist[rng.integers(0, n, n // 3)] = 0  # empty bins: infinite divergences
        ref = tensorrt_divergences(hist, levels, 128)
        got = kl_divergences(hist, levels, 128)
        assert np.array_equal(np.isfinite(got), np.isfinite(ref))
        fin = np.isfinite(ref)
        np.testing.assert_allclose(got[fin], ref[fin], rtol=1e-9, atol=1e-12)


def test_entropy_threshold_on_a_long_tail() -> None:
    rng = np.random.default_rng(13)
    x = np.maximum(rng.standard_t(3, 1_000_000), 0).astype(np.float32)  # ReLU of a long tail
    source = Counted(batches(x, [300_000, 600_000]))
    lo, hi = calibrate(source, ["t"], "entropy")["t"]
    assert source.passes == 1
    assert lo == 0.0 and np.percentile(x, 99) < hi < 0.6 * float(x.max())

    s = rng.standard_t(3, 1_000_000).astype(np.float32)
    s[s < -2] = -2.0  # signed, short lower side: (-t, t) within the observed range
    lo, hi = calibrate(lambda: [{"t": s}], ["t"], "entropy")["t"]
    assert lo == -2.0 and np.percentile(s, 99) < hi < 0.6 * float(s.max())


def test_entropy_levels_follow_the_scheme() -> None:
    assert cal.entropy_levels(True, UINT8) == 256  # [0, t] on 256 levels
    assert cal.entropy_levels(False, UINT8) == 128  # [-t, t]: 128 a side
    assert cal.entropy_levels(True, INT8_SYM) == 128
    assert cal.entropy_levels(True, QuantScheme(bits=16)) == 65536
    x = np.abs(np.random.default_rng(14).standard_t(3, 100_000))
    lo, hi = calibrate(lambda: [{"t": x}], ["t"], "entropy", scheme=QuantScheme(bits=16))["t"]
    assert (lo, hi) == (0.0, float(x.max()))  # more levels than bins: no clipping


def test_entropy_is_fast_on_64_activation_batches() -> None:
    rng = np.random.default_rng(15)
    base = np.maximum(rng.standard_t(4, (32, 112, 112)), 0).astype(np.float32)

    def source() -> Iterator[dict[str, np.ndarray]]:
        for i in range(64):
            yield {"t": base * np.float32(1 + 0.01 * i)}

    start = time.perf_counter()
    lo, hi = calibrate(source, ["t"], "entropy")["t"]
    assert time.perf_counter() - start < 10.0  # about 0.5 s alone on 2 cores
    assert lo == 0.0 and 0 < hi < float(base.max()) * 1.63


# --- clip_range / calibrate -------------------------------------------------------------------
def test_clip_range_modes() -> None:
    x = np.random.default_rng(16).standard_normal(10_001).astype(np.float32)
    assert clip_range(x, "percentile", [0.01, 99.99], UINT8) == (
        float(np.percentile(x, 0.01)),
        float(np.percentile(x, 99.99)),
    )
    assert clip_range(x, "manual", [-1.0, 2.5], UINT8) == (-1.0, 2.5)
    lo, hi = clip_range(x, "mse", None, None)  # default scheme: uint8 asymmetric
    assert float(x.min()) <= lo < 0 < hi <= float(x.max())
    with pytest.raises(ValueError, match="two values"):
        clip_range(x, "percentile", None, UINT8)
    with pytest.raises(ValueError, match="unknown clip mode"):
        clip_range(x, "kl", None, UINT8)


def test_every_method_handles_empty_tensors_and_rejects_unknown_ones() -> None:
    data = [{"e": np.zeros((0, 3), np.float32)}]
    for method in ("minmax", "percentile", "mse", "entropy"):
        assert calibrate(lambda: data, ["e"], method) == {"e": (0.0, 0.0)}
    with pytest.raises(ValueError, match="unknown calibration method"):
        calibrate(lambda: data, ["e"], "kl")


def test_histogram_methods_name_a_tensor_with_nan() -> None:
    data = [{"bad": np.array([1.0, np.nan, 2.0])}]
    with pytest.raises(ValueError, match="'bad'.*non-finite"):
        calibrate(lambda: data, ["bad"], "mse")
