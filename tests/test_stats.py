from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from quantdoctor.stats import bootstrap_ci, mcnemar_exact, paired_bootstrap


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(0)
    small = (rng.random(100) < 0.8).astype(float)
    large = (rng.random(10_000) < 0.8).astype(float)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() * 100 < hi_s
    assert lo_l < 80 < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5
    assert bootstrap_ci(small) == (lo_s, hi_s)  # seeded: same numbers every time


def test_paired_bootstrap_detects_a_paired_drop() -> None:
    rng = np.random.default_rng(1)
    a = (rng.random(1000) < 0.8).astype(float)
    b = a.copy()
    b[np.flatnonzero(a)[:50]] = 0.0  # 50 images lost
    diff = paired_bootstrap(
        lambda i: a[i].mean(-1) * 100,
        lambda i: b[i].mean(-1) * 100,
        1000,
        (b.mean() - a.mean()) * 100,
    )
    assert np.isclose(diff.difference, -5.0)
    assert diff.ci95[1] < 0 and diff.ci95[0] < -5 < diff.ci95[1]


def test_mcnemar_exact_matches_the_binomial_test() -> None:
    a = np.array([1] * 30 + [0] * 10 + [1] * 60, bool)
    b = np.array([0] * 30 + [1] * 10 + [1] * 60, bool)
    result = mcnemar_exact(a, b)
    assert (result.only_a, result.only_b) == (30, 10)
    assert np.isclose(result.p_value, sps.binomtest(30, 40, 0.5).pvalue)
    assert mcnemar_exact(a, a).p_value == 1.0


def test_no_negative_zero_in_finding_text() -> None:
    from quantdoctor.report import Finding
    from quantdoctor.report.findings import no_negative_zero

    f = Finding("evaluation.within_noise", 3, "ok", f"drop {-0.001:.2f} (95% CI {-0.004:.2f} … "
                f"{0.9:.2f})", recommendation=f"up to {-0.0:.1f} points")
    assert "-0" not in f.title + f.recommendation
    assert f.title == "drop 0.00 (95% CI 0.00 … 0.90)"
    assert no_negative_zero("-0.25 and -0.001 stay") == "-0.25 and -0.001 stay"


def test_holm_adjusts_a_family_of_p_values() -> None:
    from quantdoctor.stats import holm

    assert holm([]) == []
    got = holm([0.01, 0.04, 0.03, 0.5])
    assert got == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])


def test_bootstrap_in_chunks_gives_the_same_numbers(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Resamples are drawn in chunks of rows (memory: an n_boot x n index array at once is
    0.4 GB at 50,000 images); the numbers are those of one draw."""
    import quantdoctor.stats as stats

    rng = np.random.default_rng(0)
    a, b = rng.random(5000) < 0.8, rng.random(5000) < 0.75
    whole = (stats.bootstrap_ci(a), stats.paired_bootstrap(
        lambda i: a[i].mean(1), lambda i: b[i].mean(1), len(a), 0.0))
    monkeypatch.setattr(stats, "CHUNK_INDICES", 5000 * 7)  # 7 resamples a chunk
    chunked = (stats.bootstrap_ci(a), stats.paired_bootstrap(
        lambda i: a[i].mean(1), lambda i: b[i].mean(1), len(a), 0.0))
    assert chunked == whole
