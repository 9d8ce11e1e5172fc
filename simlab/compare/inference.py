"""Intervals and tests for compare's numbers, chosen to hold their coverage at the small n of a sweep
(8-50 samples): pure functions over arrays, no model, no I/O.

- a mean: the studentized (bootstrap-t) interval, 10,000 rounds. At n = 8 on skewed data the
  percentile and BCa intervals cover 83-90% (tests/unit/test_inference.py simulates it); the
  studentized one covers ~94%. Below 8 values it is unstable, and the t-interval is used.
- a rate (replies that stopped, were cut, ended at end-of-text): Clopper-Pearson, exact
  (`scipy.stats.binomtest`), so 12/12 is [0.735, 1], not [1, 1].
- a difference between two variants: variants share seeds, so sample i of one is paired with
  sample i of the other; the interval is the studentized bootstrap of the paired differences and
  the p-value a paired permutation test (`scipy.stats.permutation_test`, signs flipped within
  pairs; exact up to 2^13 pairs). Effect size: paired Cohen's d (d_z = mean / sd of the differences).
- many tests at once: Holm's step-down adjustment; a `*` means "survives it at 5%".
- what n can detect: the paired difference a two-sided t-test finds with 80% power at 5%.
- a statistic of the whole set of samples (corpus distinct-n, self-BLEU): the jackknife over
  samples. (A bootstrap over samples repeats replies, which by itself lowers distinct-n.)
- a paired difference of 0/1 values (a reply cut or not, one turn): Newcombe's paired score interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

ROUNDS = 10_000
LEVEL = 0.95
MIN_BOOTSTRAP = 8
FEW_OTHERS = 3  # most samples share a value, and fewer than this do not: no interval (studentized_mean)
ALPHA = 0.05


@dataclass(frozen=True)
class Estimate:
    """A value with its 95% interval over n units; `method` names how the interval was made."""

    mean: float
    low: float
    high: float
    n: int
    method: str = ""
    extra: dict = field(default_factory=dict, compare=False)  # p, p_holm, d, detectable, k (a rate)

    @property
    def excludes_zero(self) -> bool:
        return bool(self.n > 1 and (self.low > 0 or self.high < 0))

    @property
    def significant(self) -> bool:
        """The difference survives Holm's correction across its table (or, untested, excludes 0)."""
        p = self.extra.get("p_holm")
        return bool(p is not None and p < ALPHA)

    def as_dict(self) -> dict:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "method": self.method,
            **self.extra,
        }


NAN = Estimate(math.nan, math.nan, math.nan, 0, "no values")
FLOORED = "; its low end cut at the metric's floor"  # (a length is >= 0: the floor is not a bound found)


def _clean(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    return x[np.isfinite(x)]


def studentized_mean(
    values: Sequence[float],
    rounds: int = ROUNDS,
    seed: int = 0,
    level: float = LEVEL,
    floor: float = -math.inf,
) -> Estimate:
    """The mean and its studentized bootstrap interval: the quantiles of (mean* - mean) / se*
    over resamples (those with any spread), scaled by the sample's own standard error. Below
    MIN_BOOTSTRAP values the bootstrap's t is unstable (an interval 40 times the t-interval's at
    n = 5 in simulation), so the t-interval is used there."""
    x = _clean(values)
    n = x.size
    if n == 0:
        return NAN
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1, "one value: no interval")
    se = float(x.std(ddof=1)) / math.sqrt(n)
    tied = int(np.unique(x, return_counts=True)[1].max())
    if se == 0 or (2 * tied > n and n - tied < FEW_OTHERS):  # zero-width or too narrow: none, and why
        # (measured: 66% coverage at n = 8 where 80% of samples share one value; 99% with this rule)
        why = "all equal" if tied == n else f"{tied} of {n} equal"
        method = f"{why}: too few other values for an interval"
        return Estimate(mean, math.nan, math.nan, n, method, {"why": why})
    if n < MIN_BOOTSTRAP:
        h = float(stats.t.ppf(1 - (1 - level) / 2, n - 1)) * se
        method = f"t-interval (n < {MIN_BOOTSTRAP})" + (FLOORED if mean - h < floor else "")
        return Estimate(mean, max(floor, mean - h), mean + h, n, method)
    rng = np.random.default_rng(seed)
    resampled = x[rng.integers(0, n, (rounds, n))]  # (rounds, n)
    se_star = resampled.std(axis=1, ddof=1) / math.sqrt(n)
    spread = se_star > 0  # a resample of one repeated value has no t
    t = (resampled.mean(axis=1)[spread] - mean) / se_star[spread]
    tail = (1 - level) / 2
    t_low, t_high = np.quantile(t, [tail, 1 - tail])
    low, high = float(mean - t_high * se), float(mean - t_low * se)
    method = f"studentized bootstrap, {rounds} rounds" + (FLOORED if low < floor else "")
    return Estimate(mean, max(floor, low), high, n, method)  # floor: a length is >= 0


def rate(k: int, n: int, level: float = LEVEL) -> Estimate:
    """k of n with its exact (Clopper-Pearson) interval."""
    if n == 0:
        return NAN
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return Estimate(k / n, float(ci.low), float(ci.high), n, "Clopper-Pearson", {"k": k})


def paired(
    a: Sequence[float], b: Sequence[float], rounds: int = ROUNDS, seed: int = 0, level: float = LEVEL
) -> Estimate:
    """mean(b - a) over the pairs where both have a value: studentized bootstrap interval, paired
    permutation p-value, d_z, and the difference n pairs detect with 80% power."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    d = y - x
    n = d.size
    if n == 0:
        return NAN
    binary = bool(np.isin(x, (0.0, 1.0)).all() and np.isin(y, (0.0, 1.0)).all())
    base = newcombe_paired(x, y, level) if binary else studentized_mean(d, rounds, seed, level)
    extra: dict = {**base.extra, "pairs": n}  # (why there is no interval, where there is none)
    if n > 1:
        sd = float(d.std(ddof=1))
        extra["p"] = permutation_p(x, y, seed=seed)
        extra["d"] = (
            float(d.mean() / sd) if sd > 0 else (0.0 if d.mean() == 0 else math.copysign(math.inf, d.mean()))
        )
        extra["detectable"] = detectable_dz(n) * sd
    return Estimate(base.mean, base.low, base.high, n, "paired, " + base.method, extra)


def newcombe_paired(x: np.ndarray, y: np.ndarray, level: float = LEVEL) -> Estimate:
    """mean(y) - mean(x) for paired 0/1 values, with Newcombe's (1998) hybrid score interval for
    paired proportions (his method 10): each proportion's Wilson interval, combined with the
    correlation of the pairs."""
    n = x.size
    a, b = int(((x == 1) & (y == 1)).sum()), int(((x == 1) & (y == 0)).sum())
    c, d = int(((x == 0) & (y == 1)).sum()), int(((x == 0) & (y == 0)).sum())
    p1, p2 = (a + c) / n, (a + b) / n  # y's and x's proportions
    w1 = stats.binomtest(a + c, n).proportion_ci(level, method="wilson")
    w2 = stats.binomtest(a + b, n).proportion_ci(level, method="wilson")
    denominator = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(denominator) if denominator else 0.0
    theta = p1 - p2
    low = theta - math.sqrt(
        max(0.0, (p1 - w1.low) ** 2 - 2 * phi * (p1 - w1.low) * (w2.high - p2) + (w2.high - p2) ** 2)
    )
    high = theta + math.sqrt(
        max(0.0, (w1.high - p1) ** 2 - 2 * phi * (w1.high - p1) * (p2 - w2.low) + (p2 - w2.low) ** 2)
    )
    return Estimate(theta, low, high, n, "Newcombe's paired score interval")


def permutation_p(x: np.ndarray, y: np.ndarray, rounds: int = ROUNDS, seed: int = 0) -> float:
    """Two-sided p-value of mean(y - x) = 0, swapping each pair's members at random."""
    if np.all(x == y):
        return 1.0
    result = stats.permutation_test(
        (x, y),
        lambda u, v, axis: np.mean(v - u, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=rounds,
        alternative="two-sided",
        random_state=seed,
    )
    return float(result.pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    idx = np.where(np.isfinite(p))[0]
    m = idx.size
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def detectable_dz(n: int, power: float = 0.8, alpha: float = ALPHA) -> float:
    """The standardized paired difference (d_z) a two-sided paired t-test on n pairs detects with
    the given power: solved with the noncentral t distribution."""
    if n < 2:
        return math.inf
    df, crit = n - 1, stats.t.ppf(1 - alpha / 2, n - 1)

    def shortfall(dz: float) -> float:
        nc = dz * math.sqrt(n)
        return stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc) - power

    for high in (2.0, 4.0, 8.0, 16.0):  # the noncentral t is NaN far out: widen the bracket gently
        if shortfall(high) > 0:
            return float(optimize.brentq(shortfall, 1e-6, high))
    return math.inf


def jackknife(
    statistic: Callable[[list[int]], float],
    n: int,
    level: float = LEVEL,
    bounds: tuple[float, float] | None = None,
) -> Estimate:
    """A statistic of n samples (given the indices kept) with its jackknife interval: the
    leave-one-out standard error and a t quantile with n - 1 degrees of freedom."""
    whole = statistic(list(range(n)))
    if n < 3 or not math.isfinite(whole):
        return Estimate(whole, math.nan, math.nan, n, "jackknife (too few samples)")
    leave = np.array([statistic([j for j in range(n) if j != i]) for i in range(n)])
    se = math.sqrt((n - 1) / n * float(((leave - leave.mean()) ** 2).sum()))
    if se == 0:  # every sample left out gives the same value: no spread to make an interval of
        why = f"jackknife: all {n} leave-one-out values equal, no interval"
        return Estimate(whole, math.nan, math.nan, n, why, {"why": "all equal"})
    h = stats.t.ppf(1 - (1 - level) / 2, n - 1) * se
    low, high = whole - h, whole + h
    if bounds is not None:  # a share cannot leave [0, 1]: the interval is cut there (said in its method)
        low, high = max(low, bounds[0]), min(high, bounds[1])
    extra = {"se": se}
    if se > 0:
        extra["p"] = float(2 * stats.t.sf(abs(whole) / se, n - 1))
    return Estimate(whole, float(low), float(high), n, "jackknife", extra)
