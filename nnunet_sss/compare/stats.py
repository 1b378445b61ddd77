"""Statistics of per-case metrics: description of one model, paired comparison of two.

Conventions (also written into every report):
- NaN values (nnU-Net writes Dice = NaN for a class absent from both reference and
  prediction) are left out, as nnU-Net's own means do (np.nanmean); the count kept is `n`.
- std is the sample standard deviation over cases (ddof=1; NaN for fewer than two cases).
- Confidence intervals are percentile bootstrap intervals of the mean, resampling cases with
  replacement BOOTSTRAP_RESAMPLES times from a generator seeded with BOOTSTRAP_SEED, so a
  report is reproducible to the last digit.
- The paired test is scipy.stats.wilcoxon on the per-case differences (two-sided, zero
  differences dropped: zero_method="wilcox"). When every difference is exactly zero the test
  is undefined (scipy would divide 0 by 0); we report p = 1.0 with note "all differences are
  zero" instead of calling scipy. With no usable pair the p-value is NaN with a note.
"""
from __future__ import annotations

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


def bootstrap_mean_ci(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                      confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values` (no NaNs); (nan, nan) when empty."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def describe(values, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
             confidence: float = CONFIDENCE, with_ci: bool = True) -> dict:
    """n, mean, std (ddof=1), median, min, max and (optionally) the bootstrap CI of the mean."""
    values = np.asarray(values, dtype=np.float64)
    kept = values[~np.isnan(values)]
    out = {"n": int(kept.size), "n_nan": int(values.size - kept.size)}
    if kept.size == 0:
        out.update(mean=float("nan"), std=float("nan"), median=float("nan"), min=float("nan"), max=float("nan"))
    else:
        out.update(mean=float(kept.mean()), std=float(kept.std(ddof=1)) if kept.size > 1 else float("nan"),
                   median=float(np.median(kept)), min=float(kept.min()), max=float(kept.max()))
    if with_ci:
        out["ci_low"], out["ci_high"] = bootstrap_mean_ci(kept, resamples, seed, confidence)
    return out


def paired_comparison(a, b, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                      confidence: float = CONFIDENCE) -> dict:
    """Compare per-case values b against a (same cases, same order): difference = b - a.

    Pairs where either value is NaN are dropped (counted in n_dropped). Returns n, the mean
    and median difference, its bootstrap CI, wins/ties/losses of b, and the Wilcoxon
    signed-rank statistic and p-value.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_comparison needs two 1-D arrays of equal length, got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = b[keep] - a[keep]
    out = {"n": int(d.size), "n_dropped": int(a.size - d.size),
           "mean_a": float(a[keep].mean()) if d.size else float("nan"),
           "mean_b": float(b[keep].mean()) if d.size else float("nan"),
           "mean_difference": float(d.mean()) if d.size else float("nan"),
           "median_difference": float(np.median(d)) if d.size else float("nan"),
           "wins": int((d > 0).sum()), "ties": int((d == 0).sum()), "losses": int((d < 0).sum())}
    out["ci_low"], out["ci_high"] = bootstrap_mean_ci(d, resamples, seed, confidence)
    if d.size == 0:
        out.update(wilcoxon_statistic=float("nan"), p_value=float("nan"), note="no case with a value in both")
    elif np.all(d == 0):
        out.update(wilcoxon_statistic=0.0, p_value=1.0, note="all differences are zero")
    else:
        from scipy import stats as scipy_stats  # imported here: `nnunet-sss --help` stays quick

        res = scipy_stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        out.update(wilcoxon_statistic=float(res.statistic), p_value=float(res.pvalue), note="")
    return out
