"""What a sweep says: per-variant metrics with bootstrap intervals, differences against the first
variant, cross log-probabilities (teacher-forced) and divergences of next-token distributions."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from simlab.compare.metrics import (
    Estimate,
    bootstrap_difference,
    bootstrap_mean,
    distinct_n,
    jsd,
    kl,
    self_bleu,
    words,
)
from simlab.compare.spec import Spec, Variant
from simlab.compare.sweep import VariantRun
from simlab.frame.render import render_spans, reply_prompt
from simlab.turns import unsaved_path

METRICS = {  # key: (label, what it means)
    "length": ("length", "reply length in tokens"),
    "distinct_1": ("distinct-1", "unique words / words, within a sample's replies"),
    "distinct_2": ("distinct-2", "unique word pairs / word pairs, within a sample's replies"),
    "self_bleu": ("self-BLEU", "BLEU-4 of a reply against the variant's other replies (high: samples alike)"),
    "logprob": ("logprob", "mean token log-probability under the generating model (nats)"),
    "stop_rate": ("stop", "share of replies that ended at a stop string"),
    "length_rate": ("cut", "share of replies cut at max tokens"),
    "eos_rate": ("eos", "share of replies that ended with end-of-text"),
}


@dataclass
class VariantStats:
    name: str
    persona: str
    model: str
    samples: int
    values: dict[str, list[float]]
    estimates: dict[str, Estimate]
    texts: list[
        list[tuple[int | None, str, str | None]]
    ]  # per turn: (seed, text, finish reason) of each sample
    prompt_tokens: int | None = None  # the first reply's prompt (frame, greeting, first turn), when counted


@dataclass
class Analysis:
    spec: Spec
    variants: list[VariantStats]
    differences: dict[str, dict[str, Estimate]]  # variant -> metric -> (variant - baseline)
    cross_logprob: dict[str, dict[str, Estimate]] = field(default_factory=dict)  # replies of a, under b
    divergence: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def reply_tokens(node) -> float:
    """A reply's length in tokens; a server's reply has no ids, but logprobs or its usage count tell."""
    if node.token_ids or node.logprobs:
        return len(node.token_ids) or len(node.logprobs)
    backend = node.backend or {}
    count = (backend.get("usage") or {}).get("completion_tokens")
    if isinstance(count, int) and "choice" not in backend:
        return count
    counted = backend.get("reply_tokens")  # by the tokenizer that counts the server's tokens here
    return counted if isinstance(counted, int) and counted > 0 else math.nan


def sample_values(run: VariantRun) -> dict[str, list[float]]:
    """Each metric's value for each complete sample of one variant."""
    samples = run.samples
    turns = len(samples[0]) if samples else 0
    bleu_by_turn = [self_bleu([words(s[t].text) for s in samples]) for t in range(turns)]
    values: dict[str, list[float]] = {k: [] for k in METRICS}
    for i, replies in enumerate(samples):
        tokens = [lp for r in replies for lp in r.logprobs]
        text = words(" ".join(r.text for r in replies))
        values["length"].append(sum(reply_tokens(r) for r in replies) / len(replies))
        values["distinct_1"].append(distinct_n(text, 1))
        values["distinct_2"].append(distinct_n(text, 2))
        values["self_bleu"].append(sum(b[i] for b in bleu_by_turn) / turns if len(samples) > 1 else math.nan)
        values["logprob"].append(sum(tokens) / len(tokens) if tokens else math.nan)
        for reason in ("stop", "length", "eos"):
            values[f"{reason}_rate"].append(sum(r.finish_reason == reason for r in replies) / len(replies))
    return {k: [v for v in vs if not math.isnan(v)] for k, vs in values.items()}


def analyse(
    spec: Spec, runs: list[VariantRun], engine_for: Callable[[str | None], Any] | None = None, seed: int = 0
) -> Analysis:
    stats = []
    for run in runs:
        values = sample_values(run)
        texts = [
            [(s[t].seed, s[t].text, s[t].finish_reason) for s in run.samples] for t in range(len(spec.turns))
        ]
        stats.append(
            VariantStats(
                run.variant.name,
                run.variant.persona.name,
                run.variant.model or spec.model or "default",
                len(run.samples),
                values,
                {k: bootstrap_mean(v, seed=seed) for k, v in values.items()},
                texts,
            )
        )
    base = stats[0]
    differences = {
        s.name: {k: bootstrap_difference(base.values[k], s.values[k], seed=seed) for k in METRICS}
        for s in stats[1:]
    }
    analysis = Analysis(spec, stats, differences)
    if engine_for is not None:
        _prompt_tokens(analysis, engine_for)
        models = {v.model or spec.model for v in spec.variants}
        if not all(engine_for(model).capabilities.can_score for model in models):
            analysis.notes.append(
                "cross log-probabilities and next-token divergences need a local model (the "
                "weights themselves); skipped for this server-backed sweep"
            )
        else:
            _cross_logprob(analysis, runs, engine_for, seed)
            _divergence(analysis, engine_for)
    return analysis


# -- teacher-forced cross log-probability ----------------------------------------------------


def render_under(variant: Variant, turns: list[str], replies: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """A sample's turns and replies as variant's document, rendered as its replies were; returns the
    text and the replies' spans."""
    exchanges = list(zip(turns, replies))
    path = unsaved_path(variant.persona, exchanges)
    text, spans = render_spans(path)
    return text, spans[len(path) - 2 * len(exchanges) + 1 :: 2]  # each exchange's reply


def score_spans(engine, text: str, spans: list[tuple[int, int]]) -> float | None:
    """Mean log-probability of the tokens overlapping the spans, each given all text before it."""
    ids, offsets = engine.encode_with_offsets(text)
    if len(ids) > engine.info.context_length:
        return None
    picks = [
        j
        for j in range(1, len(ids))
        if any(offsets[j][1] > a and offsets[j][0] < b for a, b in spans) and offsets[j][1] > offsets[j][0]
    ]
    if not picks:
        return None
    scores = engine.score(ids)  # scores[j - 1]: token j given the tokens before it
    return sum(scores[j - 1] for j in picks) / len(picks)


def _cross_logprob(analysis: Analysis, runs: list[VariantRun], engine_for, seed: int) -> None:
    spec = analysis.spec
    if any(run.variant.persona.mode == "chat" for run in runs):
        analysis.notes.append(
            "cross log-probability skipped: a chat-mode variant has no plain transcript to score"
        )
        return
    for source in runs:
        row = {}
        for frame in runs:
            engine = engine_for(frame.variant.model or spec.model)
            scores = []
            for sample in source.samples:
                text, spans = render_under(frame.variant, list(spec.turns), [r.text for r in sample])
                score = score_spans(engine, text, spans)
                if score is not None:
                    scores.append(score)
            row[frame.variant.name] = bootstrap_mean(scores, seed=seed)
        analysis.cross_logprob[source.variant.name] = row
    if len({r.variant.model or spec.model for r in runs}) > 1:
        analysis.notes.append(
            "variants use different models: each column is scored by its own variant's "
            "model and tokenizer, so columns are not comparable token for token"
        )


# -- next-token distributions at the first reply ---------------------------------------------


def first_prompt(variant: Variant, turn: str, tokenizer) -> str | list[int]:
    return reply_prompt(unsaved_path(variant.persona, [(turn, None)]), variant.persona.model, tokenizer)


def _prompt_tokens(analysis: Analysis, engine_for) -> None:
    """Each variant's first prompt in tokens, by its engine's tokenizer (a server's when one counts)."""
    spec, counted, sources = analysis.spec, [], set()
    for variant, stats in zip(spec.variants, analysis.variants):
        engine = engine_for(variant.model or spec.model)
        if engine.tokenizer is None:
            continue
        prompt = first_prompt(variant, spec.turns[0], engine.tokenizer)
        stats.prompt_tokens = len(engine.encode(prompt) if isinstance(prompt, str) else prompt)
        counted.append(f"{stats.name} {stats.prompt_tokens}")
        sources.add(getattr(engine.info, "tokenizer", "") or "the model's tokenizer")
    if counted:
        analysis.notes.append(
            f"prompt tokens before the first reply (frame, greeting, first turn), counted by "
            f"{', '.join(sorted(sources))}: {', '.join(counted)}"
        )


def _divergence(analysis: Analysis, engine_for) -> None:
    spec = analysis.spec
    by_model: dict[str | None, list[Variant]] = {}
    for variant in spec.variants:
        by_model.setdefault(variant.model or spec.model, []).append(variant)
    dists, tops = {}, {}
    for model, variants in by_model.items():
        engine = engine_for(model)
        for v in variants:
            p = engine.next_token_probs(first_prompt(v, spec.turns[0], engine.tokenizer))
            dists[v.name] = (model, p)
            best = p.argsort()[::-1][:5]
            tops[v.name] = [(engine.tokenizer.decode([int(i)]), float(p[i])) for i in best]
    for a, b in combinations([v.name for v in spec.variants], 2):
        (model_a, p), (model_b, q) = dists[a], dists[b]
        if model_a != model_b:
            analysis.notes.append(f"no divergence for {a} vs {b}: different models, different vocabularies")
            continue
        analysis.divergence.append(
            {
                "a": a,
                "b": b,
                "kl_ab": kl(p, q),
                "kl_ba": kl(q, p),
                "jsd_bits": jsd(p, q),
                "top_a": tops[a],
                "top_b": tops[b],
            }
        )
