"""compare.inference against scipy on fixed data, and the coverage the intervals promise, simulated."""

import math

import numpy as np
import pytest
from scipy import stats

from simlab.compare.inference import (
    detectable_dz,
    holm,
    jackknife,
    newcombe_paired,
    paired,
    permutation_p,
    rate,
    studentized_mean,
)


def test_rates_are_clopper_pearson_even_at_0_and_n():
    all_of = rate(12, 12)
    assert all_of.mean == 1.0 and all_of.low == pytest.approx(0.7354, abs=1e-4) and all_of.high == 1.0
    none = rate(0, 8)
    assert none.low == 0.0 and none.high == pytest.approx(1 - 0.025 ** (1 / 8))
    some = rate(3, 10)
    ci = stats.binomtest(3, 10).proportion_ci(method="exact")
    assert (some.low, some.high) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_the_paired_test_is_scipys_exact_sign_flip_and_d_is_paired():
    a = np.array([10.0, 12, 9, 14, 11, 13, 10, 12])
    b = a + np.array([1.5, 0.5, 2.0, 1.0, -0.5, 1.5, 1.0, 2.5])
    exact = stats.permutation_test(
        (a, b), lambda x, y, axis: np.mean(y - x, axis=axis), permutation_type="samples", n_resamples=np.inf
    )
    assert permutation_p(a, b) == pytest.approx(exact.pvalue)
    e = paired(a, b)
    d = b - a
    assert e.mean == pytest.approx(d.mean()) and e.extra["d"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert e.extra["p"] == pytest.approx(exact.pvalue) and e.excludes_zero
    # pairs with a missing value on either side are left out
    assert paired([1.0, math.nan, 3.0], [2.0, 5.0, 3.5]).n == 2


def test_pairing_narrows_the_interval_when_samples_share_seeds():
    rng = np.random.default_rng(3)
    shared = rng.normal(50, 10, 12)  # what the seed decides, the same for both variants
    a, b = shared + rng.normal(0, 2, 12), shared + 3 + rng.normal(0, 2, 12)
    width = paired(a, b).high - paired(a, b).low
    unpaired = stats.ttest_ind(b, a).confidence_interval()
    assert width < 0.5 * (unpaired.high - unpaired.low)


def test_holm_matches_the_step_down_definition():
    p = [0.01, 0.04, 0.03, 0.005, math.nan]
    # sorted 0.005, 0.01, 0.03, 0.04 with m = 4: 0.02, 0.03, 0.06, 0.06 (monotone)
    assert holm(p)[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(holm(p)[4])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_detectable_effect_has_the_power_it_claims():
    for n in (8, 20):
        dz = detectable_dz(n)
        crit = stats.t.ppf(0.975, n - 1)
        power = stats.nct.sf(crit, n - 1, dz * math.sqrt(n)) + stats.nct.cdf(-crit, n - 1, dz * math.sqrt(n))
        assert power == pytest.approx(0.8, abs=1e-6)
    assert 1.1 < detectable_dz(8) < 1.2 and detectable_dz(20) < detectable_dz(8)


def test_jackknife_of_the_mean_is_the_t_interval():
    x = np.array([3.0, 5, 4, 8, 6, 7, 2, 9])
    e = jackknife(lambda idx: float(x[idx].mean()), len(x))
    t = stats.ttest_1samp(x, 0).confidence_interval()
    assert (e.low, e.high) == (pytest.approx(t.low), pytest.approx(t.high))


def test_paired_0_1_values_get_newcombes_interval_which_holds_its_coverage():
    x = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1, 0], dtype=float)
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0, 1, 0], dtype=float)
    e = paired(x, y)
    assert e.method.startswith("paired, Newcombe") and e.mean == pytest.approx(-0.2)
    assert -1 <= e.low < e.mean < e.high <= 1
    # coverage: 1,000 experiments of 20 correlated pairs, true difference 0.2
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(1000):
        base = rng.random(20) < 0.3
        other = np.where(rng.random(20) < 0.6, base, rng.random(20) < 0.5)  # P(other) = 0.6*0.3 + 0.4*0.5
        e = newcombe_paired(base.astype(float), other.astype(float))
        hits += e.low <= (0.6 * 0.3 + 0.4 * 0.5) - 0.3 <= e.high
    assert 0.93 <= hits / 1000 <= 0.98


def test_below_8_values_the_mean_gets_the_t_interval():
    x = np.array([3.0, 9.0, 4.0, 5.0])
    e = studentized_mean(x)
    t = stats.ttest_1samp(x, 0).confidence_interval()
    assert e.method.startswith("t-interval") and (e.low, e.high) == (
        pytest.approx(t.low),
        pytest.approx(t.high),
    )


def test_a_constant_sample_and_tiny_samples_do_not_break():
    same = studentized_mean([2.0, 2.0, 2.0])  # no zero-width interval: it claims what no sample gave
    assert same.mean == 2.0 and math.isnan(same.low) and same.extra["why"] == "all equal"
    assert math.isnan(studentized_mean([1.0]).low) and studentized_mean([]).n == 0
    flat = paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert flat.mean == 0 and flat.extra["p"] == 1.0 and not flat.excludes_zero


def test_the_studentized_interval_covers_95_percent_at_n_8_on_skewed_data():
    """2,000 simulated experiments of 8 samples from a gamma(2) distribution (skewness 1.4, like
    reply lengths): the interval covers the true mean 93-97% of the time. The percentile bootstrap,
    for comparison, covers well under 93%."""
    rng = np.random.default_rng(21)
    data = rng.gamma(2.0, 1.0, (2000, 8))  # true mean 2
    hits = sum(e.low <= 2.0 <= e.high for e in (studentized_mean(x, seed=i) for i, x in enumerate(data)))
    assert 0.93 <= hits / 2000 <= 0.97, hits / 2000
    percentile = 0
    for i, x in enumerate(data[:500]):
        means = x[np.random.default_rng(i).integers(0, 8, (2000, 8))].mean(axis=1)
        low, high = np.quantile(means, [0.025, 0.975])
        percentile += low <= 2.0 <= high
    assert percentile / 500 < 0.92


def test_corpus_metrics_get_an_exact_paired_permutation_test():
    from simlab.compare.stats import Reply, corpus_permutation_p

    def sample(text):
        return [Reply(text, 3.0, (), "stop", 0)]

    diverse = [sample(f"word{i} other{i} more{i}") for i in range(8)]
    same = [sample("yes I do") for _ in range(8)]
    assert corpus_permutation_p(diverse, diverse, "distinct_1", 0) == 1.0
    # only the two assignments that keep every sample on its side (or swap all) are as extreme
    assert corpus_permutation_p(diverse, same, "distinct_1", 0) == pytest.approx(2 / 256)
    assert corpus_permutation_p(diverse, same, "self_bleu", 0) == pytest.approx(2 / 256)


def test_an_interval_cut_at_the_floor_says_so_and_the_report_shows_it():
    from simlab.compare.inference import FLOORED
    from simlab.compare.report import _fmt

    cut = studentized_mean([0.0, 0.0, 1.0, 60.0, 0.0, 70.0], floor=0.0)  # a t-interval below 0
    assert cut.low == 0.0 and FLOORED in cut.method
    assert _fmt(cut).startswith(f"{cut.mean:.2f} [0.00 floor, ")
    whole = studentized_mean([10.0, 11.0, 12.0, 13.0, 9.0, 10.5], floor=0.0)
    assert FLOORED not in whole.method and "floor" not in _fmt(whole)
    assert _fmt(studentized_mean([4.0] * 8)) == "4.00 (all equal)"


def test_the_tests_table_keeps_the_metric_beside_each_column_group_at_80_columns():
    from simlab.compare.report import _column_groups

    widths = [10, 12, 24, 6, 8, 6, 40]  # variant, metric, difference, p, p (Holm), d_z, method
    groups = _column_groups(widths, 80, keys=2)
    assert len(groups) > 1 and all(g[:2] == [0, 1] for g in groups)
    assert sorted({i for g in groups for i in g}) == list(range(7))


# the shapes compare's metrics take: a value most samples share (a length at max tokens, a rate-like
# score), heavy tails (lengths with a few very long replies), bounded in [0, 1] (distinct-n, self-BLEU)
SHAPES = {
    "mostly one value": (lambda r, n: np.where(r.random(n) < 0.8, 5.0, 5.0 + r.exponential(10, n)), 7.0),
    "half one value": (lambda r, n: np.where(r.random(n) < 0.5, 0.0, r.exponential(10, n)), 5.0),
    "skewed": (lambda r, n: r.gamma(2, 1, n), 2.0),
    "heavy tails": (lambda r, n: r.lognormal(0, 1.0, n), math.exp(0.5)),
    "bounded": (lambda r, n: r.beta(0.5, 0.5, n), 0.5),
}


@pytest.mark.parametrize("n", [8, 32])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_where_an_interval_is_given_it_covers_the_true_mean(shape, n):
    """600 simulated experiments per shape and n: where most samples share one value the cell gives
    no interval (with its reason) rather than one that covers 66% at n = 8 (measured; 99% of those
    given now), and the intervals given cover the true mean 92% or more. Not yet on heavy tails
    (lognormal, sigma 1): 87% at n = 8 and 91% at n = 32, measured, and held here so that it
    cannot get worse unseen; the skewed shape at n = 8, 92% here (93-97% over 2,000 above)."""
    draw, mean = SHAPES[shape]
    rng = np.random.default_rng(7)
    hits = given = 0
    for r in range(600):
        e = studentized_mean(draw(rng, n), seed=r, rounds=999)
        if math.isnan(e.low):
            assert e.extra["why"].endswith("equal")  # never a silent gap
            continue
        given += 1
        hits += e.low <= mean <= e.high
    least = {("heavy tails", 8): 0.86, ("heavy tails", 32): 0.90, ("skewed", 8): 0.91}.get((shape, n), 0.92)
    assert given >= 100 and hits / given >= least, (hits / given, given)


def test_samples_auto_stops_where_every_sample_is_equal_and_goes_on_where_most_are():
    """`--samples auto` asks for more samples until the intervals are narrow enough: a cell with no
    interval because every sample is equal will never get one (it counts as narrow), one where
    most samples share a value may (it counts as wide, so the sweep samples on)."""
    from simlab.cli.compare import _no_width

    assert _no_width(studentized_mean([3.0] * 8)) == 0.0
    assert _no_width(studentized_mean([3.0] * 7 + [9.0])) == math.inf
