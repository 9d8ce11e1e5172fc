"""Metric functions on hand-made inputs with known answers."""

import math

import numpy as np
import pytest

from simlab.compare.metrics import (
    bleu,
    bootstrap_difference,
    bootstrap_mean,
    distinct_n,
    jsd,
    kl,
    self_bleu,
    words,
)


def test_distinct_n():
    assert distinct_n(words("the cat the cat the dog"), 1) == pytest.approx(3 / 6)
    assert distinct_n(words("the cat the cat the dog"), 2) == pytest.approx(
        3 / 5
    )  # the-cat, cat-the, the-dog
    assert distinct_n(["a"], 2) == 0.0 and distinct_n([], 1) == 0.0
    assert distinct_n(words("a b c d"), 2) == 1.0


def test_bleu_known_values():
    ref = words("the cat sat on the mat")
    assert bleu(ref, [ref]) == pytest.approx(1.0)
    # the hypothesis "the cat sat on the" against the reference: precisions 1, 1, 1, 1 and a brevity
    # penalty exp(1 - 6/5)
    assert bleu(words("the cat sat on the"), [ref]) == pytest.approx(math.exp(1 - 6 / 5))
    # no 4-gram overlap: p4 = 0.1/3 (smoothed), p1 = 1, p2 = 3/5... computed by hand
    hyp = words("the cat sat the mat on")  # 6 words
    p1, p2, p3, p4 = 6 / 6, 3 / 5, 1 / 4, 0.1 / 3  # 2-grams the-cat cat-sat the-mat; 3-gram the-cat-sat
    assert bleu(hyp, [ref]) == pytest.approx((p1 * p2 * p3 * p4) ** 0.25)
    assert bleu(words("completely different words here"), [ref]) < 0.1
    assert bleu(words("too short"), [ref]) == 0.0


def test_clipping_and_several_references():
    hyp = words("the the the the the the")
    refs = [words("the cat is on the mat"), words("there is a cat on the mat")]
    # clipped unigram precision 2/6 (at most two "the" in one reference); no higher-order matches
    expected = ((2 / 6) * (0.1 / 5) * (0.1 / 4) * (0.1 / 3)) ** 0.25
    assert bleu(hyp, refs) == pytest.approx(expected)


def test_self_bleu_is_high_for_copies_and_low_for_different_texts():
    same = [words("one two three four five")] * 3
    assert self_bleu(same) == pytest.approx([1.0, 1.0, 1.0])
    different = [words("alpha beta gamma delta"), words("one two three four"), words("red green blue black")]
    assert max(self_bleu(different)) < 0.1


def test_kl_and_jsd_known_values():
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    assert kl(p, q) == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1))
    assert kl(p, p) == 0.0 and kl(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == math.inf
    assert jsd(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)  # disjoint: 1 bit
    assert jsd(p, p) == 0.0
    m = (p + q) / 2
    assert jsd(p, q) == pytest.approx((kl(p, m) + kl(q, m)) / 2 / math.log(2))
    assert jsd(p, q) == pytest.approx(jsd(q, p)) and kl(p, q) != pytest.approx(kl(q, p))


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    trials, hits = 300, 0
    for t in range(trials):
        sample = rng.exponential(scale=2.0, size=60)  # true mean 2, skewed
        est = bootstrap_mean(sample, rounds=1000, seed=t)
        hits += est.low <= 2.0 <= est.high
        assert est.low <= est.mean <= est.high
    assert 0.89 <= hits / trials <= 0.98


def test_bootstrap_difference_marks_real_differences_only():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 80), rng.normal(1, 1, 80)
    diff = bootstrap_difference(a, b)
    assert diff.excludes_zero and 0.6 < diff.mean < 1.4
    same = bootstrap_difference(a, rng.normal(0, 1, 80))
    assert not same.excludes_zero
    single = bootstrap_mean([3.0])
    assert (single.mean, single.low, single.high) == (3.0, 3.0, 3.0) and not single.excludes_zero
    assert math.isnan(bootstrap_mean([]).mean)
