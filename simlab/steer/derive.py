"""`simlab steer derive`: a direction from two personas. Both answer the same user turns (seeded
replies, saved as nodes of a session, so the derivation is replayable); each reply is read again in
one teacher-forced pass whose blocks' outputs (the residual stream where a vector is added, trace's
`block.N`) are kept at the reply's own tokens. Per block, the direction is B's mean minus A's (each
reply's mean over its tokens, averaged over replies: Chen et al.'s persona vectors), or the first
principal component of the paired differences with its sign and length set by that mean
difference. Each block's direction is then judged on turns it was not made from (two folds of the
turns): how far it separates B's tokens from A's (AUC)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

from simlab.engine.params import SamplingParams
from simlab.persona.schema import Persona
from simlab.session.store import Session
from simlab.session.tokens import own_tokens
from simlab.steer.vector import SteerVector
from simlab.turns import add_frame, start_replies

AGGREGATES = ("mean", "pca")


@dataclass
class Residuals:
    """Per reply: its persona (0: A, 1: B), its turn, and per block its tokens' residuals (T, H)."""

    persona: list[int] = field(default_factory=list)
    turn: list[int] = field(default_factory=list)
    sample: list[int] = field(default_factory=list)
    blocks: list[np.ndarray] = field(default_factory=list)  # each (layers, T, H), float32
    nodes: list[str] = field(default_factory=list)


def sample_both(
    engine,
    session: Session,
    personas: tuple[Persona, Persona],
    turns: Sequence[str],
    params: SamplingParams,
    samples: int,
    progress: Callable[[int], None] = lambda k: None,
) -> Residuals:
    """Each persona answers each turn `samples` times under one sampling (params, with each
    persona's own stop strings; seeds params.seed + k, the same for both, so sample k of A and of B
    are a pair); their residuals at the reply tokens."""
    found = Residuals()
    for p, persona in enumerate(personas):
        start = add_frame(session, persona)
        for t, text in enumerate(turns):
            user = session.add_child(start.id, "user", text, speaker=persona.user, persona=persona.name)
            own = params.with_overrides(stop=persona.stop_strings)  # (its own next-speaker label)
            replies = start_replies(engine, session, user.id, own, samples, persona=persona.name)
            replies.decode()
            kept = [c for c in replies.run.completions if c.tokens]
            nodes = replies.save(lambda c: bool(c.tokens))
            lead = replies.framing.lead() if replies.framing.mode == "simulator" else ""
            for k, (completion, node) in enumerate(zip(kept, nodes)):
                own = own_tokens([tok.text for tok in completion.tokens], node.text, lead)
                if own == 0:
                    continue
                ids = list(replies.fit.prompt) + [tok.id for tok in completion.tokens[:own]]
                found.blocks.append(block_outputs(engine, ids, len(ids) - own))
                found.persona.append(p)
                found.turn.append(t)
                found.sample.append(k)
                found.nodes.append(node.id)
            progress(1)
    return found


def read_pairs(engine, pairs: Sequence[tuple[str, str]]) -> Residuals:
    """repeng's contrastive pairs: each prompt's residuals at its last token (pair k's positive as
    persona 1, B; its negative as persona 0, A; each pair its own turn)."""
    found = Residuals()
    for k, (positive, negative) in enumerate(pairs):
        for p, text in ((1, positive), (0, negative)):
            ids = engine.encode(text)
            found.blocks.append(block_outputs(engine, ids, len(ids) - 1))
            found.persona.append(p)
            found.turn.append(k)
            found.sample.append(0)
    return found


def block_outputs(engine, ids: list[int], start: int) -> np.ndarray:
    """Every block's output at positions start.. of one teacher-forced pass: (layers, T - start, H)."""
    from simlab.models.steering import block_list

    kept: list[torch.Tensor] = []

    def hook(module, args, output):
        value = output[0] if isinstance(output, tuple) else output
        kept.append(value[0, start:].float())

    handles = [block.register_forward_hook(hook) for block in block_list(engine.model)[1]]
    try:
        with torch.inference_mode():
            engine.model(input_ids=torch.tensor([ids], device=engine.device))
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(kept).cpu().numpy()


@dataclass(frozen=True)
class BlockResult:
    block: int
    direction: np.ndarray
    relative_norm: float  # the direction's norm / the mean norm of the residuals at this block
    auc: float  # held out: P(a B token projects higher than an A token), on turns not used to make it


def directions(found: Residuals, aggregate: str = "mean") -> list[BlockResult]:
    """Each block's direction from all turns, its AUC from two folds of the turns (made on one half,
    judged on the other), and its norm relative to the residual stream's."""
    persona, turn = np.array(found.persona), np.array(found.turn)
    layers = found.blocks[0].shape[0]
    folds = [np.isin(turn, np.unique(turn)[f::2]) for f in (0, 1)]  # by turn: no turn judges itself
    results = []
    for block in range(layers):
        per_reply = [r[block] for r in found.blocks]  # (T, H) each
        direction = _direction(found, per_reply, np.ones(len(per_reply), bool), aggregate)
        norms = np.concatenate([np.linalg.norm(r, axis=1) for r in per_reply])
        aucs = []
        for held in folds:
            if held.all() or not held.any():
                continue
            made = _direction(found, per_reply, ~held, aggregate)
            aucs.append(_auc(per_reply, persona, held, made))
        auc = float(np.mean(aucs)) if aucs else float("nan")
        results.append(BlockResult(block, direction, float(np.linalg.norm(direction) / norms.mean()), auc))
    return results


def _direction(found: Residuals, per_reply, use: np.ndarray, aggregate: str) -> np.ndarray:
    persona = np.array(found.persona)
    # each reply's mean over its tokens, then the mean over replies (a long reply counts once)
    mean = {
        p: np.mean([r.mean(0) for r, q, u in zip(per_reply, persona, use) if q == p and u], 0) for p in (0, 1)
    }
    delta = (mean[1] - mean[0]).astype(np.float32)
    if aggregate == "mean":
        return delta
    # pairs: sample k of turn t under A and under B (the same seed); the difference of their means
    means = {
        (q, t, k): r.mean(0) for r, q, t, k, u in zip(per_reply, persona, found.turn, found.sample, use) if u
    }
    diffs = np.array(
        [means[(1, t, k)] - means[(0, t, k)] for (q, t, k) in means if q == 0 and (1, t, k) in means]
    )
    if len(diffs) < 2:
        return delta
    centred = diffs - diffs.mean(0)
    component = np.linalg.svd(centred, full_matrices=False)[2][0]
    # its sign as repeng's: B above A in more of the pairs than not (ties: the mean difference's side)
    votes = np.sign(diffs @ component)
    sign = np.sign(votes.sum()) or np.sign(component @ delta) or 1.0
    # its length: the mean difference's projection on it, so strength 1 moves the stream that far
    return (sign * component * abs(float(component @ delta))).astype(np.float32)


def _auc(per_reply, persona: np.ndarray, held: np.ndarray, direction: np.ndarray) -> float:
    unit = direction / (np.linalg.norm(direction) or 1.0)
    a = np.concatenate([r @ unit for r, q, h in zip(per_reply, persona, held) if h and q == 0])
    b = np.concatenate([r @ unit for r, q, h in zip(per_reply, persona, held) if h and q == 1])
    if not len(a) or not len(b):
        return float("nan")
    return float(stats.mannwhitneyu(b, a).statistic / (len(a) * len(b)))


def vector_of(results: list[BlockResult], blocks: Sequence[int], meta: dict, hint: str) -> SteerVector:
    """The blocks chosen as a vector llama.cpp loads (never block 0: llama.cpp steers none there)."""
    chosen = {r.block: r.direction for r in results if r.block in blocks and r.block >= 1}
    table = {str(r.block): {"relative_norm": r.relative_norm, "auc": r.auc} for r in results}
    return SteerVector(chosen, {**meta, "blocks": table}, hint)
