"""Metrics of sampled replies and divergences between framings: pure functions, no model, no I/O.

Words are lower-cased whitespace tokens, so variants with different tokenizers are measured alike.
Intervals and tests over these are in compare.inference.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np


def words(text: str) -> list[str]:
    return text.lower().split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: Sequence[str], n: int) -> float:
    """Unique n-grams / all n-grams (Li et al. 2016); 0 for a text shorter than n."""
    grams = ngrams(tokens, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Sentence BLEU-4 as nltk's `sentence_bleu` with `SmoothingFunction().method1` computes it:
    clipped n-gram counts against all references over max(1, n-grams of the hypothesis), a zero
    count replaced by epsilon 0.1 (so a reply shorter than 4 words still scores), 0 when no word
    matches, and the brevity penalty against the closest reference length."""
    if not hypothesis or not references:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        counts = Counter(ngrams(hypothesis, n))
        best: Counter = Counter()
        for ref in references:
            for gram, c in Counter(ngrams(ref, n)).items():
                best[gram] = max(best[gram], c)
        clipped = sum(min(c, best[gram]) for gram, c in counts.items())
        if n == 1 and clipped == 0:
            return 0.0
        log_precision += math.log((clipped if clipped else 0.1) / max(1, sum(counts.values()))) / max_n
    length = len(hypothesis)
    closest = min((len(r) for r in references), key=lambda r: (abs(r - length), r))
    brevity = 1.0 if length > closest else math.exp(1 - closest / length)
    return brevity * math.exp(log_precision)


def self_bleu(texts: Sequence[Sequence[str]]) -> list[float]:
    """Each text's BLEU against all the others (Zhu et al. 2018, Texygen): high means the samples
    repeat each other. It rises with the number of texts, so compare it at equal n only."""
    return [bleu(t, [o for j, o in enumerate(texts) if j != i]) for i, t in enumerate(texts)]


def self_bleu_table(texts: Sequence[Sequence[str]], max_n: int = 4, full: bool = True) -> np.ndarray:
    """(n, n): entry [i, k] is the BLEU of text i against all the other texts but k ([i, i]: against
    all the others), exactly as `bleu` computes it. Self-BLEU is the mean of the diagonal, and
    leaving sample k out takes column k without row k: the jackknife needs no recomputation.
    `full=False`: the diagonal alone, (n,)."""
    return SelfBleu(texts, max_n).table(range(len(texts)), full)


class SelfBleu:
    """The n-gram counts of a pool of texts, counted once, and the self-BLEU table of any subset
    of them (`rows`): a permutation test regroups the same texts many times."""

    def __init__(self, texts: Sequence[Sequence[str]], max_n: int = 4):
        self.max_n = max_n
        self.lengths = np.array([len(t) for t in texts])
        self.counts = []
        for order in range(1, max_n + 1):
            grams = [Counter(ngrams(t, order)) for t in texts]
            vocab = {g: j for j, g in enumerate({g for c in grams for g in c})}
            counts = np.zeros((len(texts), max(len(vocab), 1)), dtype=np.int64)
            for i, c in enumerate(grams):
                for g, k in c.items():
                    counts[i, vocab[g]] = k
            self.counts.append(counts)

    def table(self, rows, full: bool = True) -> np.ndarray:
        rows = np.asarray(list(rows), dtype=int)
        n = rows.size
        if n < 2:
            return np.zeros((n, n)) if full else np.zeros(n)
        if not full:
            return self._diagonal(rows)
        left = np.arange(n)[:, None] if full else None  # the left-out text of each column
        shape = (n, n) if full else (n, 1)
        log_p, unmatched = np.zeros(shape), np.zeros(shape, dtype=bool)
        for order, pool in enumerate(self.counts, 1):
            counts = np.vstack(
                [pool[rows], np.zeros((2, pool.shape[1]), dtype=np.int64)]
            )  # 2 rows of padding
            top = np.argsort(-counts, axis=0, kind="stable")[:3]  # the three texts with most of each n-gram
            best = np.take_along_axis(counts, top, axis=0)
            for i in range(n):
                cols = np.nonzero(counts[i])[0]
                who, many = top[:, cols], best[:, cols]  # (3, S)
                out = left if full else np.array([[i]])
                first = (who[0] != i) & (who[0] != out)  # (K, S): the best text that is neither i nor k
                second = (who[1] != i) & (who[1] != out)
                ref = np.where(first, many[0], np.where(second, many[1], many[2]))
                clipped = np.minimum(counts[i, cols][None, :], ref).sum(axis=1)  # (K,)
                if order == 1:
                    unmatched[i] = clipped == 0
                total = max(1, int(counts[i, cols].sum()))
                log_p[i] += np.log(np.where(clipped > 0, clipped, 0.1) / total) / self.max_n
        lengths = self.lengths[rows]
        table = np.zeros(shape)
        for i in range(n):
            if lengths[i] == 0:
                continue
            near = sorted(
                (j for j in range(n) if j != i), key=lambda j: (abs(lengths[j] - lengths[i]), lengths[j])
            )
            if full:
                closest = np.array([near[1] if near[0] == k and len(near) > 1 else near[0] for k in range(n)])
            else:
                closest = np.array([near[0]])
            r = lengths[closest]
            brevity = np.where(lengths[i] > r, 1.0, np.exp(1 - r / lengths[i]))
            table[i] = np.where(unmatched[i], 0.0, brevity * np.exp(log_p[i]))
        if not full:
            return table[:, 0]
        if n == 2:  # leaving the only reference out leaves none
            table[0, 1] = table[1, 0] = 0.0
        return table

    def _diagonal(self, rows: np.ndarray) -> np.ndarray:
        """Each text's BLEU against all the others, vectorized over the texts (no loop per text)."""
        n = rows.size
        mine = np.arange(n)[:, None]
        log_p, unmatched = np.zeros(n), np.zeros(n, dtype=bool)
        for order, pool in enumerate(self.counts, 1):
            counts = pool[rows]
            counts = counts[:, counts.any(axis=0)]  # (n, G): the n-grams these texts have
            if counts.shape[1] == 0:
                clipped, total = np.zeros(n), np.ones(n)
            else:
                first = counts.argmax(axis=0)  # the text with most of each n-gram, and the runner-up count
                best = counts[first, np.arange(counts.shape[1])]
                rest = counts.copy()
                rest[first, np.arange(counts.shape[1])] = -1
                runner = np.maximum(rest.max(axis=0), 0)
                ref = np.where(first[None, :] == mine, runner[None, :], best[None, :])  # without text i
                clipped = np.minimum(counts, ref).sum(axis=1)
                total = np.maximum(1, counts.sum(axis=1))
            if order == 1:
                unmatched = clipped == 0
            log_p += np.log(np.where(clipped > 0, clipped, 0.1) / total) / self.max_n
        lengths = self.lengths[rows]
        distance = np.abs(lengths[None, :] - lengths[:, None]).astype(float)
        key = distance * (lengths.max() + 1) + lengths[None, :]  # nearest, then shorter (as nltk)
        np.fill_diagonal(key, np.inf)
        r = lengths[key.argmin(axis=1)]
        with np.errstate(divide="ignore", invalid="ignore"):
            brevity = np.where(lengths > r, 1.0, np.exp(1 - r / np.maximum(lengths, 1)))
        return np.where(unmatched | (lengths == 0), 0.0, brevity * np.exp(log_p))


def corpus_distinct(grams: Sequence[Sequence[tuple[str, ...]]]) -> float:
    """Unique n-grams / all n-grams across a corpus of texts' n-grams (Li et al. 2016): a text's
    repeats of another count against it, as they should for diversity across samples."""
    total = sum(len(g) for g in grams)
    return len({gram for g in grams for gram in g}) / total if total else math.nan


def as_sampled(p: np.ndarray, params) -> np.ndarray:
    """The next-token distribution a variant actually draws from: p with its temperature, top-k,
    top-p, min-p and typical-p applied in transformers' order (as engine.logits does); greedy is
    the argmax. The repetition penalty is not applied (it depends on the prompt's tokens)."""
    p = np.asarray(p, dtype=np.float64)
    if params.greedy:
        out = np.zeros_like(p)
        out[int(np.argmax(p))] = 1.0
        return out
    with np.errstate(divide="ignore"):
        logits = np.log(p) / params.temperature
    logits -= logits.max()
    q = np.exp(logits)
    q /= q.sum()
    if 0 < params.top_k < q.size:
        q[q < np.sort(q)[-params.top_k]] = 0
        q /= q.sum()
    if params.top_p < 1.0:
        order = np.argsort(-q, kind="stable")
        above = np.cumsum(q[order]) - q[order]  # the mass ranked above each token
        drop = above >= params.top_p
        drop[0] = False
        q[order[drop]] = 0
        q /= q.sum()
    if params.min_p > 0:
        q[q < params.min_p * q.max()] = 0
        q /= q.sum()
    if params.typical_p < 1.0:
        with np.errstate(divide="ignore", invalid="ignore"):
            logq = np.log(q)
            entropy = -np.nansum(q * logq)
            shifted = np.where(q > 0, np.abs(-logq - entropy), np.inf)
        order = np.argsort(shifted, kind="stable")
        cumulative = np.cumsum(q[order])
        last = min(int((cumulative < params.typical_p).sum()), q.size - 1)
        drop = shifted[order] > shifted[order][last]
        drop[0] = False
        q[order[drop]] = 0
        q /= q.sum()
    return q


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
