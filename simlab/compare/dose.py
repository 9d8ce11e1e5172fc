"""What steering did, strength by strength (a sweep whose spec has `steer:`): for each variant's
strengths, with paired intervals (sample i of every strength shares its seeds):

- trait: the projection of the reply's residual stream on the vector (each block's direction made
  unit length, averaged over the reply's own tokens and the blocks applied), read by the unsteered
  model under the variant's own frame: how much the text itself carries the direction, no judge;
- KL to unsteered: KL(steered || unsteered) of the next-token distributions predicting the reply's
  own tokens, on the same prefixes (the steering's cost on the text it made);
- neutral: the mean log-probability of a fixed neutral text (compare/neutral.txt) under the
  steering at every position, against unsteered, paired by token (the cost on text that has
  nothing to do with the persona);
- toward: KL(toward || steered) on the unsteered replies: the toward persona's own prompt (frame,
  greeting, the same turns) against the variant's frame steered at each strength, predicting the same
  tokens. Its least point is the prompt-equivalent strength (a parabola through the best strength
  and its neighbours, with a bootstrap interval over samples): the dose that does what the prompt
  did, as far as the next token can tell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from simlab.compare.inference import Estimate, paired, studentized_mean
from simlab.compare.spec import Spec
from simlab.compare.steer import Dose, steering_for
from simlab.compare.sweep import VariantRun, sample_key
from simlab.frame.render import reply_prompt
from simlab.steer.read import forced, kl_per_token, projection
from simlab.turns import unsaved_path

NEUTRAL = Path(__file__).with_name("neutral.txt")
ROUNDS = 2000  # bootstrap rounds of the prompt-equivalent strength


@dataclass
class DoseRow:
    strength: float
    variant: str
    trait: Estimate
    trait_change: Estimate | None  # paired against strength 0 (None at 0)
    kl_unsteered: Estimate | None  # None at strength 0
    neutral: float  # nats per token of the neutral text
    neutral_change: Estimate | None  # paired by token against strength 0
    kl_toward: Estimate | None  # None without a toward persona


@dataclass
class DoseResponse:
    base: str
    vector: str
    blocks: list[int]
    positions: str
    toward: str | None
    rows: list[DoseRow]
    equivalent: dict | None = None  # strength, low, high, edge ("low"/"high"/None), samples

    def as_dict(self) -> dict:
        def est(e):
            return None if e is None else e.as_dict()

        return {
            "base": self.base,
            "vector": self.vector,
            "blocks": self.blocks,
            "positions": self.positions,
            "toward": self.toward,
            "rows": [
                {
                    "strength": r.strength,
                    "variant": r.variant,
                    "trait": est(r.trait),
                    "trait_change": est(r.trait_change),
                    "kl_unsteered": est(r.kl_unsteered),
                    "neutral": r.neutral,
                    "neutral_change": est(r.neutral_change),
                    "kl_toward": est(r.kl_toward),
                }
                for r in self.rows
            ],
            "prompt_equivalent": self.equivalent,
        }


def measure(spec: Spec, runs: list[VariantRun], engine_for, seed: int, keep: list[int], read: dict) -> list:
    """Each dose-response group of the spec, measured on the samples every variant has (`keep`, by
    key; `read`: each variant's replies as compare.stats reads them, in that order)."""
    by_name = {run.variant.name: run for run in runs}
    out = []
    for dose in spec.doses:
        group = [by_name[n] for _, n in dose.strengths]
        out.append(_group(spec, dose, group, engine_for, seed, keep, read))
    return out


def _group(
    spec: Spec, dose: Dose, group: list[VariantRun], engine_for, seed: int, keep, read
) -> DoseResponse:
    base = group[0].variant  # strength 0 comes first, the rest in order
    engine = engine_for(base.model or spec.model)
    blocks = list(dose.use.blocks or dose.use.vector.layers)
    directions = dose.use.vector.directions
    steerings = [steering_for(run.variant, engine) for run in group]
    readings = [_readings(spec, run, keep, read[run.variant.name], engine) for run in group]
    traits, kls = [], []
    for readings_s, steering in zip(readings, steerings):
        trait_s, kl_s = [], []
        for sample in readings_s:
            values, divergences = [], []
            for _, context, reply, _ in (t for t in sample if t[2]):
                plain = forced(engine, context, reply, None, blocks)
                values.append(projection(plain.blocks, directions, blocks) * len(reply))
                if steering is not None:
                    steered = forced(engine, context, reply, steering)
                    divergences.extend(kl_per_token(steered.logprobs, plain.logprobs))
            tokens = sum(len(t[2]) for t in sample)
            trait_s.append(sum(values) / tokens if tokens else math.nan)
            kl_s.append(float(np.mean(divergences)) if divergences else math.nan)
        traits.append(trait_s)
        kls.append(kl_s)
    neutral = _neutral(engine, steerings)
    toward = _toward(dose, readings[0], steerings, engine) if dose.toward is not None else None
    rows = []  # (in the order of strength; the changes are against strength 0, group[0])
    for i, ((strength, name), steering) in sorted(
        enumerate(zip(dose.strengths, steerings)), key=lambda x: x[1][0][0]
    ):
        rows.append(
            DoseRow(
                strength,
                name,
                studentized_mean(traits[i], seed=seed),
                paired(traits[0], traits[i], seed=seed) if i else None,
                studentized_mean(kls[i], seed=seed, floor=0.0) if steering is not None else None,
                float(np.mean(neutral[i])),
                studentized_mean(neutral[i] - neutral[0], seed=seed) if i else None,
                studentized_mean(toward[:, i], seed=seed, floor=0.0) if toward is not None else None,
            )
        )
    result = DoseResponse(
        base.name, dose.use.name, blocks, dose.positions, dose.toward.name if dose.toward else None, rows
    )
    if toward is not None and len(dose.strengths) >= 2:
        order = np.argsort([s for s, _ in dose.strengths], kind="stable")
        result.equivalent = equivalent([dose.strengths[i][0] for i in order], toward[:, order], seed)
    return result


def _readings(spec: Spec, run: VariantRun, keep: list[int], replies: list, engine) -> list[list[tuple]]:
    """Per kept sample, per turn: (the turn, the reply's prompt as ids, the reply's own token ids,
    the reply's text)."""
    persona = run.variant.persona
    by_key = {sample_key(s, spec, i): s for i, s in enumerate(run.samples)}
    out = []
    for key, read in zip(keep, replies):
        nodes, sample, exchanges = by_key[key], [], []
        for turn, node, reply_read in zip(spec.turns, nodes, read):
            own = reply_read.tokens
            reply = list(node.token_ids or [])[: int(own) if math.isfinite(own) else None]
            context = _context(persona, exchanges, turn, engine)
            if len(context) + len(reply) > engine.info.context_length:  # (not read: it does not fit)
                reply = []
            sample.append((turn, context, reply, node.text))
            exchanges.append((turn, node.text))
        out.append(sample)
    return out


def _context(persona, exchanges: list, turn: str, engine) -> list[int]:
    prompt = reply_prompt(unsaved_path(persona, [*exchanges, (turn, None)]), persona.model, engine.tokenizer)
    return engine.encode(prompt) if isinstance(prompt, str) else list(prompt)


def _neutral(engine, steerings) -> list[np.ndarray]:
    """Per strength: each neutral-text token's log-probability with the steering at every position."""
    ids = engine.encode(NEUTRAL.read_text(encoding="utf-8"))[: engine.info.context_length]
    out = []
    for steering in steerings:
        everywhere = replace(steering, positions="all") if steering is not None else None
        read = forced(engine, ids[:1], ids[1:], everywhere)
        targets = torch.tensor(ids[1:], device=read.logprobs.device).unsqueeze(-1)
        chosen = read.logprobs.gather(-1, targets).squeeze(-1)
        out.append(chosen.double().cpu().numpy())
    return out


def _toward(dose: Dose, base: list, steerings, engine) -> np.ndarray:
    """(samples, strengths): mean KL(toward || steered) over each unsteered sample's reply tokens."""
    persona = dose.toward
    out = np.full((len(base), len(steerings)), math.nan)
    for j, sample in enumerate(base):
        per = [[] for _ in steerings]
        exchanges: list = []
        for turn, context, reply, text in sample:
            theirs_context = _context(persona, exchanges, turn, engine)
            if reply and len(theirs_context) + len(reply) <= engine.info.context_length:
                theirs = forced(engine, theirs_context, reply)
                for i, steering in enumerate(steerings):
                    ours = forced(engine, context, reply, steering)
                    per[i].extend(kl_per_token(theirs.logprobs, ours.logprobs))
            exchanges.append((turn, text))
        for i, values in enumerate(per):
            out[j, i] = float(np.mean(values)) if values else math.nan
    return out


def equivalent(strengths: list[float], kl: np.ndarray, seed: int, rounds: int = ROUNDS) -> dict | None:
    """The strength of least mean KL (a parabola through the best grid point and its neighbours),
    with the 2.5th and 97.5th percentiles of the same over samples drawn again with replacement;
    `edge` says when the least KL is at the grid's end (the strength may lie beyond)."""
    kl = kl[np.isfinite(kl).all(axis=1)]
    if not len(kl):  # no sample had a reply to read
        return None
    s = np.asarray(strengths, dtype=float)
    best, edge = _least(s, kl.mean(axis=0))
    rng = np.random.default_rng(seed)
    draws = [_least(s, kl[rng.integers(0, len(kl), len(kl))].mean(axis=0))[0] for _ in range(rounds)]
    low, high = (
        (float(x) for x in np.quantile(draws, [0.025, 0.975])) if len(kl) > 1 else (math.nan, math.nan)
    )
    return {"strength": best, "low": low, "high": high, "edge": edge, "samples": int(len(kl))}


def _least(s: np.ndarray, curve: np.ndarray) -> tuple[float, str | None]:
    i = int(np.argmin(curve))
    if i == 0 or i == len(s) - 1:
        return float(s[i]), ("low" if i == 0 else "high")
    x, y = s[i - 1 : i + 2], curve[i - 1 : i + 2]
    a, b, _ = np.polyfit(x, y, 2)
    vertex = -b / (2 * a) if a > 0 else s[i]
    return float(min(max(vertex, x[0]), x[2])), None
