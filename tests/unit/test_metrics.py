"""Metric functions on hand-made inputs with known answers."""

import math

import numpy as np
import pytest

from simlab.compare.metrics import (
    as_sampled,
    bleu,
    corpus_distinct,
    distinct_n,
    jsd,
    kl,
    ngrams,
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
    assert bleu(words("completely different words here"), [ref]) == 0.0  # no word matches
    # shorter than 4 words: smoothed, not 0 (nltk's method 1); six identical 3-word replies look alike
    assert bleu(words("the cat sat"), [ref]) == pytest.approx((1 * 1 * 1 * 0.1) ** 0.25 * math.exp(1 - 6 / 3))
    assert self_bleu([words("yes I do")] * 6) == pytest.approx([0.1**0.25] * 6)


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


NLTK_CASES = [
    ("the cat sat on the mat", ["the cat is on the mat", "there is a cat on the mat"]),
    ("the the the the the the", ["the cat is on the mat", "there is a cat on the mat"]),
    ("yes I do", ["yes I do", "yes I do"]),
    ("no", ["yes I do", "no way"]),
    ("a b c d e f g", ["a b c x e f g h i", "b c d"]),
    ("completely unrelated", ["the cat"]),
    ("I am the interviewer and I ask", ["you are the guest and you answer", "I am here"]),
]


@pytest.mark.parametrize(("hyp", "refs"), NLTK_CASES)
def test_bleu_is_nltks_sentence_bleu_with_smoothing_method_1(hyp, refs):
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    expected = bleu_score.sentence_bleu(
        [words(r) for r in refs], words(hyp), smoothing_function=bleu_score.SmoothingFunction().method1
    )
    assert bleu(words(hyp), [words(r) for r in refs]) == pytest.approx(expected, abs=1e-12)


def test_corpus_distinct_counts_repeats_across_replies():
    replies = [words("the cat sat"), words("the cat sat"), words("a dog ran")]
    grams = [ngrams(r, 1) for r in replies]
    assert corpus_distinct(grams) == pytest.approx(6 / 9)  # within each reply all are distinct
    assert all(distinct_n(r, 1) == 1.0 for r in replies)
    assert corpus_distinct([ngrams(r, 2) for r in replies]) == pytest.approx(4 / 6)
    assert math.isnan(corpus_distinct([[]]))


def test_as_sampled_applies_each_knob_as_the_engine_does():
    from simlab.engine.params import SamplingParams

    p = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    same = as_sampled(p, SamplingParams(temperature=1.0, top_p=1.0))
    assert same == pytest.approx(p)
    hot = as_sampled(p, SamplingParams(temperature=2.0, top_p=1.0))
    assert hot == pytest.approx(np.sqrt(p) / np.sqrt(p).sum())
    assert as_sampled(p, SamplingParams(temperature=0)) == pytest.approx([1, 0, 0, 0, 0])
    nucleus = as_sampled(p, SamplingParams(temperature=1.0, top_p=0.7))  # 0.5 + 0.2 reaches 0.7
    assert nucleus == pytest.approx([0.5 / 0.7, 0.2 / 0.7, 0, 0, 0])
    top2 = as_sampled(p, SamplingParams(temperature=1.0, top_p=1.0, top_k=2))
    assert top2 == pytest.approx([0.5 / 0.7, 0.2 / 0.7, 0, 0, 0])
    floor = as_sampled(p, SamplingParams(temperature=1.0, top_p=1.0, min_p=0.25))  # below 0.125 goes
    assert floor == pytest.approx(np.array([0.5, 0.2, 0.15, 0, 0]) / 0.85)
    # a temperature-only difference shows under sampling, not at temperature 1
    cold = as_sampled(p, SamplingParams(temperature=0.5, top_p=1.0))
    assert jsd(p, p) == 0 and jsd(same, cold) > 0.05
