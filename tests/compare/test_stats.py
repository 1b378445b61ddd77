"""The paired statistics against scipy and numpy on the same arrays."""
import numpy as np
import pytest
from scipy import stats as scipy_stats

from nnunet_sss.compare.stats import (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_mean_ci, describe,
                                      paired_comparison)


def _reference_ci(values, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED, confidence=0.95):
    """The documented procedure written out: resample cases, take means, percentile interval."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    means = values[idx].mean(axis=1)
    return np.quantile(means, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])


@pytest.mark.parametrize("n", [3, 9, 40])
def test_paired_comparison_matches_scipy_wilcoxon(n):
    rng = np.random.default_rng(n)
    a = rng.uniform(0.6, 0.9, n)
    b = a + rng.normal(0.02, 0.03, n)
    b[0] = a[0]  # one zero difference: dropped by zero_method="wilcox"
    got = paired_comparison(a, b)
    ref = scipy_stats.wilcoxon(b - a, zero_method="wilcox", alternative="two-sided")
    assert got["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert got["wilcoxon_statistic"] == pytest.approx(ref.statistic)
    assert got["mean_difference"] == pytest.approx(np.mean(b - a))
    assert got["median_difference"] == pytest.approx(np.median(b - a))
    assert (got["wins"], got["ties"], got["losses"]) == ((b > a).sum(), (b == a).sum(), (b < a).sum())
    low, high = _reference_ci(b - a)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((low, high))
    assert got["ci_low"] <= got["mean_difference"] <= got["ci_high"]


def test_bootstrap_is_reproducible_and_seed_dependent():
    values = np.random.default_rng(1).normal(size=25)
    assert bootstrap_mean_ci(values) == bootstrap_mean_ci(values)
    assert bootstrap_mean_ci(values, seed=1) != bootstrap_mean_ci(values, seed=2)
    narrow = bootstrap_mean_ci(values, confidence=0.5)
    wide = bootstrap_mean_ci(values, confidence=0.99)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_all_zero_differences_give_p_one_with_a_note():
    a = np.array([0.5, 0.7, 0.9])
    got = paired_comparison(a, a.copy())
    assert got["p_value"] == 1.0 and got["note"] == "all differences are zero"
    assert got["mean_difference"] == 0.0 and got["ties"] == 3


def test_nan_pairs_are_dropped_and_counted():
    a = np.array([0.5, np.nan, 0.7, 0.8, 0.6])
    b = np.array([0.6, 0.9, np.nan, 0.85, 0.7])
    got = paired_comparison(a, b)
    keep = np.array([True, False, False, True, True])
    assert got["n"] == 3 and got["n_dropped"] == 2
    assert got["mean_difference"] == pytest.approx(np.mean(b[keep] - a[keep]))
    assert got["p_value"] == pytest.approx(scipy_stats.wilcoxon(b[keep] - a[keep]).pvalue)


def test_no_usable_pair_gives_nan_with_a_note():
    got = paired_comparison(np.array([np.nan]), np.array([0.5]))
    assert got["n"] == 0 and np.isnan(got["p_value"]) and got["note"]


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="equal length"):
        paired_comparison(np.zeros(3), np.zeros(4))


def test_describe_uses_sample_std_and_skips_nan():
    values = np.array([0.2, np.nan, 0.4, 0.9])
    got = describe(values)
    kept = values[~np.isnan(values)]
    assert got["n"] == 3 and got["n_nan"] == 1
    assert got["mean"] == pytest.approx(kept.mean())
    assert got["std"] == pytest.approx(kept.std(ddof=1))
    assert np.isnan(describe([0.3])["std"])
