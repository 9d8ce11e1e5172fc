"""What a sweep says: per-variant metrics with intervals that hold at small n, paired differences
against the first variant with Holm-corrected tests and effect sizes, a table per turn, and (with
the model, compare.scoring) cross log-probabilities and next-token divergences.

Each reply is measured on its own text: the tokens after it, which spelled the stop string (and
the white space before it), are left out of its length and log-probability. A reply cut at max
tokens has no length of its own (it was censored): `length` is over the replies that ended by
themselves, and `cut` says how many did not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simlab.compare.inference import (
    Estimate,
    detectable_dz,
    holm,
    jackknife,
    paired,
    rate,
    studentized_mean,
)
from simlab.compare.metrics import SelfBleu, corpus_distinct, ngrams, self_bleu_table, words
from simlab.compare.spec import Spec
from simlab.compare.sweep import VariantRun, sample_key
from simlab.session.tokens import own_tokens

METRICS = {  # key: (label, what it means)
    "length": ("length", "tokens of the reply's own text (not the stop string), over replies not cut"),
    "logprob": (
        "logprob",
        "mean log-probability of the reply's own tokens under the model that sampled it, at temperature 1 "
        "before the sampling filters (nats)",
    ),
    "distinct_1": (
        "distinct-1",
        "unique words / words across all of a variant's replies (corpus-level, Li et al. 2016)",
    ),
    "distinct_2": (
        "distinct-2",
        "unique word pairs / word pairs across all of a variant's replies (corpus-level)",
    ),
    "self_bleu": (
        "self-BLEU",
        "BLEU-4 of each reply against the variant's other replies at its turn, nltk's smoothing method 1 "
        "(Texygen's definition); it rises with n, so compare it at equal n",
    ),
    "cut_rate": ("cut", "share of replies cut at max tokens"),
    "eos_rate": ("eos", "share of replies that ended with end-of-text"),
    "stop_rate": ("stop", "share of replies that ended at a stop string (1 - cut - eos: not tested apart)"),
}
PER_SAMPLE = ("length", "logprob", "cut_rate", "eos_rate", "stop_rate")  # a value per sample
CORPUS = ("distinct_1", "distinct_2", "self_bleu")  # a value of the whole set of samples
TESTED = ("length", "logprob", "distinct_1", "distinct_2", "self_bleu", "cut_rate", "eos_rate")


@dataclass(frozen=True)
class Reply:
    """One reply as the statistics read it."""

    text: str
    tokens: float  # its own text's tokens (NaN: unknown)
    logprobs: tuple[float, ...]  # its own tokens' log-probabilities
    finish: str | None
    seed: int | None


@dataclass
class VariantStats:
    name: str
    persona: str
    model: str
    samples: int
    values: dict[str, list[float]]  # per-sample metrics, one value per sample in pair order
    estimates: dict[str, Estimate]
    texts: list[list[tuple[int | None, str, str | None]]]  # per turn: (seed, text, finish) of each sample
    prompt_tokens: int | None = None  # the first reply's prompt (frame, greeting, first turn), when counted
    params: dict[str, Any] = field(default_factory=dict)  # the sampling parameters it ran with
    turns: list[dict[str, Estimate]] = field(default_factory=list)  # the same metrics, turn by turn


@dataclass
class Analysis:
    spec: Spec
    variants: list[VariantStats]
    differences: dict[str, dict[str, Estimate]]  # variant -> metric -> (variant - baseline), paired
    cross_logprob: dict[str, dict[str, Estimate]] = field(default_factory=dict)  # replies of a, under b
    divergence: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pairs: int = 0  # samples present in every variant (the paired tests' n)
    dose: list = field(default_factory=list)  # compare.dose.DoseResponse: a steer: spec's strengths
    judge: str = ""  # the judge model (compare.judge), when one scored the samples
    judged: dict[str, dict[str, Estimate]] = field(default_factory=dict)  # variant -> rubric metric
    judged_diff: dict[str, dict[str, Estimate]] = field(default_factory=dict)  # variant - baseline
    judged_values: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # per sample


def read_reply(node, lead: str, decode: Callable | None, count: Callable | None) -> Reply:
    """A reply node's own tokens: from its recorded token texts (a server's) or its ids decoded,
    else counted by the tokenizer that counts a server's tokens (`count`), else unknown."""
    texts = (node.backend or {}).get("tokens")
    if not texts and node.token_ids and decode is not None:
        ids = list(node.token_ids)
        prefixes = [decode(ids[:k]) for k in range(len(ids) + 1)]
        texts = [prefixes[k + 1][len(prefixes[k]) :] for k in range(len(ids))]
    if not texts and node.token_ids and len(node.top) == len(node.token_ids):  # no tokenizer: the
        found = [next((a[1] for a in alts if a[0] == i), None) for i, alts in zip(node.token_ids, node.top)]
        texts = found if None not in found else None  # sampled tokens' texts among the alternatives
    if not texts and node.token_ids:  # nothing tells the stop string's tokens apart: all count
        return Reply(
            node.text, float(len(node.token_ids)), tuple(node.logprobs), node.finish_reason, node.seed
        )
    if texts:
        k = own_tokens(list(texts), node.text, lead)
        return Reply(node.text, float(k), tuple(node.logprobs[:k]), node.finish_reason, node.seed)
    tokens = float(count(node.text)) if count is not None and node.text else math.nan
    return Reply(node.text, tokens, (), node.finish_reason, node.seed)


def sample_values(samples: list[list[Reply]]) -> dict[str, list[float]]:
    """Each per-sample metric for each sample (pooled over its turns); NaN where it has none."""
    values: dict[str, list[float]] = {k: [] for k in PER_SAMPLE}
    for replies in samples:
        ended = [r.tokens for r in replies if r.finish != "length" and not math.isnan(r.tokens)]
        logprobs = [lp for r in replies for lp in r.logprobs]
        values["length"].append(sum(ended) / len(ended) if ended else math.nan)
        values["logprob"].append(sum(logprobs) / len(logprobs) if logprobs else math.nan)
        for key, reason in (("cut_rate", "length"), ("eos_rate", "eos"), ("stop_rate", "stop")):
            values[key].append(sum(r.finish == reason for r in replies) / len(replies))
    return values


def corpus_statistic(samples: list[list[Reply]], key: str) -> Callable[[Any], float]:
    """A corpus metric of the samples some indices pick (all of them, or all but one: the jackknife)."""
    if key == "self_bleu":  # for the jackknife: all samples, or all but one
        turns = len(samples[0]) if samples else 0
        tables = [self_bleu_table([words(replies[t].text) for replies in samples]) for t in range(turns)]
        table = np.mean(tables, axis=0) if tables else np.zeros((0, 0))  # (n, n), mean over turns

        def statistic(idx) -> float:
            kept = list(idx)
            if len(kept) < 2:
                return math.nan
            left_out = sorted(set(range(len(samples))) - set(kept))
            column = [table[i, i] for i in kept] if not left_out else [table[i, left_out[0]] for i in kept]
            return float(np.mean(column))

        return statistic
    grams = corpus_grams(samples, 1 if key == "distinct_1" else 2)
    return lambda idx: corpus_distinct([g for i in idx for g in grams[i]])


def corpus_grams(samples: list[list[Reply]], n: int) -> list[list[list[tuple[str, ...]]]]:
    """Per sample, per reply, its word n-grams (n-grams never span two replies)."""
    return [[ngrams(words(r.text), n) for r in replies] for replies in samples]


def estimates(samples: list[list[Reply]], seed: int, only: str | None = None) -> dict[str, Estimate]:
    """Every metric of one variant (or one turn of it) with its interval; `only`: just that one."""
    values = sample_values(samples)
    replies = [r for s in samples for r in s]
    wanted = [only] if only else list(METRICS)
    out = {}
    for key in wanted:
        if key in ("length", "logprob"):
            out[key] = studentized_mean(values[key], seed=seed, floor=0.0 if key == "length" else -math.inf)
        elif key in ("cut_rate", "eos_rate", "stop_rate"):
            reason = {"cut_rate": "length", "eos_rate": "eos", "stop_rate": "stop"}[key]
            out[key] = rate(sum(r.finish == reason for r in replies), len(replies))
        else:  # distinct-n, self-BLEU: shares, within [0, 1]
            out[key] = jackknife(corpus_statistic(samples, key), len(samples), bounds=(0.0, 1.0))
    return out


def differences(base: list[list[Reply]], other: list[list[Reply]], seed: int) -> dict[str, Estimate]:
    """other - base for every tested metric, sample i paired with sample i (the same seeds)."""
    a, b = sample_values(base), sample_values(other)
    out = {k: paired(a[k], b[k], seed=seed) for k in ("length", "logprob", "cut_rate", "eos_rate")}
    n = min(len(base), len(other))
    for key in CORPUS:
        first, second = corpus_statistic(base[:n], key), corpus_statistic(other[:n], key)
        e = jackknife(lambda idx, f=first, g=second: g(idx) - f(idx), n, bounds=(-1.0, 1.0))
        extra = {**e.extra, "pairs": n}
        if n > 1:
            extra["p"] = corpus_permutation_p(base[:n], other[:n], key, seed)
        method = (
            f"paired jackknife interval, permutation test ({'exact' if 2**n <= PERMUTATIONS else 'random'})"
        )
        out[key] = Estimate(e.mean, e.low, e.high, n, method, extra)
    for key in ("cut_rate", "eos_rate"):  # no variation on either side: nothing to test
        if len(set(a[key][:n] + b[key][:n])) == 1:
            e = out[key]
            out[key] = Estimate(e.mean, e.low, e.high, e.n, "no variation: not tested", {"pairs": e.n})
    return out


PERMUTATIONS = 512  # a corpus metric's paired permutation test: exact up to 9 pairs, else random


def corpus_permutation_p(base: list[list[Reply]], other: list[list[Reply]], key: str, seed: int) -> float:
    """Two-sided p of a corpus metric's difference (other - base): samples swapped between the
    variants within pairs, the metric recomputed on each side (all 2^n swaps while that is at most
    PERMUTATIONS, else that many at random, counting the observed one)."""
    n = len(base)
    if key == "self_bleu":  # the texts' n-grams counted once; each swap picks rows
        turns = len(base[0]) if base else 0
        pools = [
            SelfBleu([words(s[t].text) for s in base] + [words(s[t].text) for s in other])
            for t in range(turns)
        ]

        def side(rows) -> float:
            return float(np.mean([pool.table(rows, full=False).mean() for pool in pools]))
    else:
        grams = corpus_grams(base + other, 1 if key == "distinct_1" else 2)

        def side(rows) -> float:
            return corpus_distinct([g for i in rows for g in grams[i]])

    def difference(flips) -> float:
        flips = np.asarray(flips, dtype=bool)
        first = np.arange(n) + n * flips  # base's sample i, or other's where swapped
        return side(first + n * ~flips - n * flips) - side(first)

    observed = abs(difference([False] * n))
    if 2**n <= PERMUTATIONS:
        patterns = [[bool(k >> i & 1) for i in range(n)] for k in range(2**n)]
        return float(np.mean([abs(difference(f)) >= observed - 1e-12 for f in patterns]))
    rng = np.random.default_rng(seed)
    hits = sum(abs(difference(rng.random(n) < 0.5)) >= observed - 1e-12 for _ in range(PERMUTATIONS - 1))
    return (hits + 1) / PERMUTATIONS


def paired_samples(runs: list[VariantRun], spec: Spec) -> list[int]:
    """The sample indices (by the first turn's seed) every variant completed, in order."""
    keys = [{sample_key(s, spec, i) for i, s in enumerate(run.samples)} for run in runs]
    return sorted(set.intersection(*keys)) if keys else []


def read_runs(
    spec: Spec, runs: list[VariantRun], engine_for
) -> tuple[list[int], dict[str, list[list[Reply]]]]:
    """The samples every variant completed (by seed), and each variant's replies read as Replies."""
    keep = paired_samples(runs, spec)
    read = {}
    for run in runs:
        engine = engine_for(run.variant.model or spec.model) if engine_for is not None else None
        tokenizer = getattr(engine, "tokenizer", None)
        decode = tokenizer.decode if tokenizer is not None and engine.capabilities.token_ids else None
        count = (lambda t, tk=tokenizer: len(tk.encode(t, add_special_tokens=False))) if tokenizer else None
        lead = run.variant.persona.framing().lead() if run.variant.persona.mode == "simulator" else ""
        by_key = {sample_key(s, spec, i): s for i, s in enumerate(run.samples)}
        read[run.variant.name] = [[read_reply(n, lead, decode, count) for n in by_key[k]] for k in keep]
    return keep, read


def primary(
    spec: Spec, runs: list[VariantRun], engine_for, metric: str, seed: int = 0
) -> dict[str, Estimate]:
    """One metric's estimate per variant (for `samples: auto`)."""
    _, read = read_runs(spec, runs, engine_for)
    return {name: estimates(samples, seed, only=metric)[metric] for name, samples in read.items()}


def analyse(
    spec: Spec,
    runs: list[VariantRun],
    engine_for: Callable[[str | None], Any] | None = None,
    seed: int = 0,
) -> Analysis:
    keep, read = read_runs(spec, runs, engine_for)
    stats = [_variant(run, read[run.variant.name], spec, seed) for run in runs]
    if engine_for is not None:  # the model each ran on, by the name it has here
        for v, run in zip(stats, runs):
            v.model = engine_for(run.variant.model or spec.model).info.spec
    base = read[runs[0].variant.name] if runs else []
    diffs = {run.variant.name: differences(base, read[run.variant.name], seed) for run in runs[1:]}
    analysis = Analysis(spec, stats, diffs, pairs=len(keep))
    _correct(analysis)
    _detectable_note(analysis)
    _cut_note(analysis)
    if engine_for is not None:
        from simlab.compare.scoring import with_model

        with_model(analysis, runs, engine_for, seed)
        if spec.doses:
            from simlab.compare.dose import measure

            analysis.dose = measure(spec, runs, engine_for, seed, keep, read)
    return analysis


def _variant(run: VariantRun, samples: list[list[Reply]], spec: Spec, seed: int) -> VariantStats:
    texts = [[(s[t].seed, s[t].text, s[t].finish) for s in samples] for t in range(len(spec.turns))]
    values = sample_values(samples)
    turns = (
        [estimates([[s[t]] for s in samples], seed) for t in range(len(spec.turns))]
        if len(spec.turns) > 1
        else []
    )
    return VariantStats(
        run.variant.name,
        run.variant.persona.name,
        run.variant.model or spec.model or "default",
        len(samples),
        values,
        estimates(samples, seed),
        texts,
        params=run.variant.params.as_record(),
        turns=turns,
    )


def _correct(analysis: Analysis) -> None:
    """Holm across every test of the differences table; `significant` reads the adjusted p."""
    cells = [(name, key) for name, d in analysis.differences.items() for key in TESTED if key in d]
    adjusted = holm([analysis.differences[n][k].extra.get("p", math.nan) for n, k in cells])
    for (name, key), p in zip(cells, adjusted):
        if not math.isnan(p):
            analysis.differences[name][key].extra["p_holm"] = p


def _detectable_note(analysis: Analysis) -> None:
    n = analysis.pairs
    if not analysis.differences or n < 2:
        return
    first = next(iter(analysis.differences.values()))
    units = [
        f"{METRICS[k][0]} ±{first[k].extra['detectable']:.3g}"
        + (f" (only {first[k].n} pairs have one)" if first[k].n != n else "")
        for k in ("length", "logprob")
        if math.isfinite(first[k].extra.get("detectable", math.nan))
    ]
    analysis.notes.append(
        f"with {n} paired samples a two-sided paired t-test at 5% has 80% power for an effect of "
        f"d_z ≥ {detectable_dz(n):.2f}"
        + (f" (here about {', '.join(units)}, each at its own number of pairs)" if units else "")
        + "; Holm's correction across the table makes the bar higher"
    )


def _cut_note(analysis: Analysis) -> None:
    """`length` leaves cut replies out: say so where that is many of them."""
    many = [
        f"{v.name} {v.estimates['cut_rate'].extra.get('k', 0)}/{v.estimates['cut_rate'].n}"
        for v in analysis.variants
        if v.estimates["cut_rate"].n and v.estimates["cut_rate"].mean >= 0.25
    ]
    if many:
        analysis.notes.append(
            "length is over the replies that ended by themselves; many were cut at max tokens "
            f"({', '.join(many)}), so length's n is smaller than the samples' and it leans short where "
            "more are cut: raise max tokens, or read length together with cut"
        )
