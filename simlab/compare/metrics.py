"""Metrics of sampled replies and divergences between framings: pure functions, no model, no I/O.

Every per-variant metric is a value per sample (one scripted conversation), so each gets a mean
with a 95% bootstrap interval over the samples, and differences between variants get a bootstrap
interval of the difference of means. Words are lower-cased whitespace tokens, so variants with
different tokenizers are measured alike.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_ROUNDS = 2000


def words(text: str) -> list[str]:
    return text.lower().split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: Sequence[str], n: int) -> float:
    """Unique n-grams / all n-grams (Li et al. 2016); 0 for a text shorter than n."""
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Sentence BLEU-4 with clipped counts against several references, the closest reference
    length for the brevity penalty, and smoothing of zero counts by epsilon 0.1 (Chen & Cherry, method 1)."""
    if not hypothesis or not references:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        counts = Counter(ngrams(hypothesis, n))
        total = sum(counts.values())
        if total == 0:
            return 0.0  # shorter than n words: BLEU-4 is undefined; count it as no overlap
        best: Counter = Counter()
        for ref in references:
            for gram, c in Counter(ngrams(ref, n)).items():
                best[gram] = max(best[gram], c)
        clipped = sum(min(c, best[gram]) for gram, c in counts.items())
        log_precision += math.log((clipped if clipped else 0.1) / total) / max_n
    length = len(hypothesis)
    closest = min((len(r) for r in references), key=lambda r: (abs(r - length), r))
    brevity = 1.0 if length > closest else math.exp(1 - closest / length)
    return brevity * math.exp(log_precision)


def self_bleu(texts: Sequence[Sequence[str]]) -> list[float]:
    """Each text's BLEU against all the others: high means the samples repeat each other."""
    return [bleu(t, [o for j, o in enumerate(texts) if j != i]) for i, t in enumerate(texts)]


# -- intervals --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def bootstrap_mean(
    values: Sequence[float], rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0, level: float = 0.95
) -> Estimate:
    """Mean and percentile bootstrap interval."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    if x.size == 1:
        return Estimate(float(x[0]), float(x[0]), float(x[0]), 1)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (rounds, x.size))].mean(axis=1)  # (rounds,)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Estimate(float(x.mean()), float(low), float(high), int(x.size))


def bootstrap_difference(
    a: Sequence[float], b: Sequence[float], rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0, level: float = 0.95
) -> Estimate:
    """mean(b) - mean(a), with both groups resampled independently."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    diffs = y[rng.integers(0, y.size, (rounds, y.size))].mean(axis=1) - x[
        rng.integers(0, x.size, (rounds, x.size))
    ].mean(axis=1)  # (rounds,)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return Estimate(float(y.mean() - x.mean()), float(low), float(high), int(min(x.size, y.size)))


# -- divergences between next-token distributions --------------------------------------------


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats over one axis of probabilities; inf where q is 0 and p is not."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    mask = p > 0
    if np.any(q[mask] == 0):
        return math.inf
    return float(np.sum(p[mask] * (np.log(p[mask]) - np.log(q[mask]))))


def jsd(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0 = same, 1 = disjoint): the mean KL to the mixture,
    not the symmetric KL some tools call JS."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    m = (p + q) / 2
    return (kl(p, m) + kl(q, m)) / 2 / math.log(2)
