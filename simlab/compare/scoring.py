"""What a sweep says with the model's help: each variant's first prompt in tokens, cross
log-probabilities (each variant's replies teacher-forced under every frame) and the next-token
distributions at the first reply, at temperature 1 and as each variant samples."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import combinations

from simlab.compare.inference import studentized_mean
from simlab.compare.metrics import as_sampled, jsd, kl
from simlab.compare.spec import Variant
from simlab.compare.steer import steering_for
from simlab.compare.sweep import VariantRun
from simlab.engine.scored import served_tokens_of
from simlab.frame.render import render_spans, reply_prompt
from simlab.turns import unsaved_path
from simlab.turns.servers import server_map


def with_model(analysis, runs: list[VariantRun], engine_for, seed: int) -> None:
    """Add what needs the model (or a server's tokenizer) to the analysis."""
    spec = analysis.spec
    _prompt_tokens(analysis, engine_for)
    models = {v.model or spec.model for v in spec.variants}
    if all(engine_for(model).capabilities.can_score for model in models):
        _cross_logprob(analysis, runs, engine_for, seed)
        _divergence(analysis, engine_for)
        return
    lacking = [m for m in models if not _prompt_scoring(engine_for(m))]
    if lacking:
        analysis.notes.append(
            "cross log-probabilities need a local model or a server with prompt log-probabilities "
            f"(echo with logprobs, or vLLM's prompt_logprobs; its probe found none at "
            f"{', '.join(_where(engine_for(m)) for m in lacking)}); next-token divergences need "
            "a local model; both skipped for this server-backed sweep"
        )
        return
    analysis.notes.append(
        "cross log-probabilities scored on the server (its prompt log-probabilities); next-token "
        "divergences need a local model (the whole distribution): skipped for this server-backed sweep"
    )
    _cross_logprob(analysis, runs, engine_for, seed)


def _where(engine) -> str:
    return getattr(getattr(engine, "config", None), "base_url", None) or engine.info.name


def _prompt_scoring(engine) -> str:
    """How a server scores a prompt teacher-forced (its probe), "" where it cannot."""
    found = server_map(engine)
    return found.prompt_logprobs if found is not None and found.scores else ""


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
    if not engine.capabilities.local:  # a server with prompt log-probabilities (with_model checked)
        tokens = served_tokens_of(engine, text, _prompt_scoring(engine))
        picks = [
            t.logprob for t in tokens if t.end > t.start and any(t.end > a and t.start < b for a, b in spans)
        ]
        return sum(picks) / len(picks) if picks else None
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


def _cross_logprob(analysis, runs: list[VariantRun], engine_for, seed: int) -> None:
    spec = analysis.spec
    if any(run.variant.persona.mode == "chat" for run in runs):
        analysis.notes.append(
            "cross log-probability skipped: a chat-mode variant has no plain transcript to score"
        )
        return
    columns = _frames(spec, runs)
    for source in runs:
        row, done = {}, {}
        for name, frame in columns:
            model = frame.model or spec.model
            key = (_frame_key(frame), model)  # (steered variants share their base's frame: scored once)
            if key not in done:
                engine = engine_for(model)
                scores = []
                for sample in source.samples:
                    text, spans = render_under(frame, list(spec.turns), [r.text for r in sample])
                    score = score_spans(engine, text, spans)
                    if score is not None:
                        scores.append(score)
                done[key] = studentized_mean(scores, seed=seed)
            row[name] = done[key]
        analysis.cross_logprob[source.variant.name] = row
    if len({r.variant.model or spec.model for r in runs}) > 1:
        analysis.notes.append(
            "variants use different models: each column is scored by its own variant's "
            "model and tokenizer, so columns are not comparable token for token"
        )


def _frames(spec, runs: list[VariantRun]) -> list[tuple[str, Variant]]:
    """The cross table's columns: each frame the variants read (steered variants read their base's),
    then each dose-response's toward persona where no variant reads its frame already (how likely
    the steered replies are under the prompt the steering stands in for)."""
    columns, keys = [], set()
    for run in runs:  # (a steered variant reads its base's frame: one column for them all)
        key = (_frame_key(run.variant), run.variant.model)
        if key not in keys:
            columns.append((run.variant.name, run.variant))
            keys.add(key)
    for dose in spec.doses:
        if dose.toward is not None:
            base = next(run.variant for run in runs if run.variant.name == dose.base)
            toward = replace(base, name=f"{dose.toward.name} (toward)", persona=dose.toward, steer=())
            if (_frame_key(toward), toward.model) not in keys:
                columns.append((toward.name, toward))
                keys.add((_frame_key(toward), toward.model))
    return columns


def _frame_key(variant: Variant) -> str:
    persona = variant.persona
    return json.dumps(
        [persona.render_frame(), persona.greetings(), persona.framing().to_dict()],
        sort_keys=True,
        default=str,
    )


# -- next-token distributions at the first reply ---------------------------------------------


def first_prompt(variant: Variant, turn: str, tokenizer) -> str | list[int]:
    return reply_prompt(unsaved_path(variant.persona, [(turn, None)]), variant.persona.model, tokenizer)


def _prompt_tokens(analysis, engine_for) -> None:
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


def _divergence(analysis, engine_for) -> None:
    spec = analysis.spec
    by_model: dict[str | None, list[Variant]] = {}
    for variant in spec.variants:
        by_model.setdefault(variant.model or spec.model, []).append(variant)
    dists, tops = {}, {}
    for model, variants in by_model.items():
        engine = engine_for(model)
        for v in variants:
            steering = steering_for(v, engine)  # (a steered prompt's last position is steered)
            prompt = first_prompt(v, spec.turns[0], engine.tokenizer)
            p = engine.next_token_probs(prompt, steering)
            dists[v.name] = (model, p)
            best = p.argsort()[::-1][:5]
            tops[v.name] = [(engine.tokenizer.decode([int(i)]), float(p[i])) for i in best]
    params = {v.name: v.params for v in spec.variants}
    for a, b in combinations([v.name for v in spec.variants], 2):
        (model_a, p), (model_b, q) = dists[a], dists[b]
        if model_a != model_b:
            analysis.notes.append(f"no divergence for {a} vs {b}: different models, different vocabularies")
            continue
        sp, sq = as_sampled(p, params[a]), as_sampled(q, params[b])
        analysis.divergence.append(
            {
                "a": a,
                "b": b,
                "kl_ab": kl(p, q),
                "kl_ba": kl(q, p),
                "jsd_bits": jsd(p, q),
                "sampled_kl_ab": kl(sp, sq),
                "sampled_kl_ba": kl(sq, sp),
                "sampled_jsd_bits": jsd(sp, sq),
                "top_a": tops[a],
                "top_b": tops[b],
            }
        )
