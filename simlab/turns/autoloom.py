"""The adaptive autoloom: a document's tree grown by itself, each node cut where the distribution forks
instead of after a fixed number of tokens.

A node is cut before its first token, from `min_tokens` on, whose position the model is unsure of:
the model's own probability of its likeliest token there is below `conf_threshold`. The node keeps
the tokens before it (finish reason "fork"), and its children start at that fork: in "forks" mode
the tokens there whose probability is at least `p_threshold` (at most `children`, the likeliest
first), each given as its child's first token and the model writing on; in "sampled" mode
`children` seeded samples, one batch. Every child is sampled with the session's settings and a seed
of its own, so replay re-runs it to its cut. Growth is breadth first, to `max_depth` levels below
the start, until `budget` tokens are spent (a fork's branches, once begun, are all finished: it can
run over by those); a branch whose probability from the start (the model's own, the product of its
tokens') is below `prune` grows no further. Ctrl-C stops it at the next token; every node is saved
as it is made.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from simlab.engine.params import SamplingParams
from simlab.engine.protocol import Engine
from simlab.engine.results import Completion
from simlab.errors import SimlabError
from simlab.frame.render import framing_of
from simlab.frame.window import fit_prompt
from simlab.session.store import Session
from simlab.session.tree import Node
from simlab.turns.replies import node_fields

MODES = ("forks", "sampled")


@dataclass(frozen=True)
class Knobs:
    """What the autoloom grows by (`/set` names them; `simlab loom --grow` takes them as flags)."""

    p_threshold: float = 0.1  # forks: a token at a fork is a branch from this probability on
    conf_threshold: float = 0.3  # a fork: the likeliest next token's probability below this
    min_tokens: int = 4  # tokens a node has before it may be cut
    max_depth: int = 3  # levels of nodes below the start
    budget: int = 400  # tokens sampled in all
    children: int = 3  # branches at each fork (forks: at most)
    mode: str = "forks"  # forks | sampled
    prune: float = 0.0  # a branch below this probability from the start grows no further

    def __post_init__(self) -> None:
        for name in ("p_threshold", "conf_threshold", "prune"):
            if not 0 <= getattr(self, name) <= 1:
                raise SimlabError(f"{name} {getattr(self, name)}: give a probability from 0 to 1")
        for name, low, high in (("min_tokens", 1, 4096), ("max_depth", 1, 64), ("budget", 1, 10**6),
                                ("children", 1, 16)):  # fmt: skip
            if not low <= getattr(self, name) <= high:
                raise SimlabError(f"{name} {getattr(self, name)}: give a whole number from {low} to {high}")
        if self.mode not in MODES:
            raise SimlabError(f"mode {self.mode!r}: give one of {', '.join(MODES)}")

    @classmethod
    def of(cls, saved: dict | None, **changes: Any) -> Knobs:
        """Knobs from what a session saved (unknown or bad values left at their defaults), changed."""
        known = {f.name: f.type for f in fields(cls)}
        base = {k: v for k, v in (saved or {}).items() if k in known}
        try:
            knobs = cls(**base)
        except (SimlabError, TypeError):
            knobs = cls()
        return replace(knobs, **changes)

    def record(self) -> dict[str, Any]:
        return asdict(self)


def parse(name: str, value: str) -> dict[str, Any]:
    """`/set NAME VALUE` for a knob: {name: value}, checked (SimlabError saying what is wrong)."""
    kinds = {f.name: f.type for f in fields(Knobs)}
    if name not in kinds:
        raise SimlabError(f"{name}: not an autoloom knob ({', '.join(kinds)})")
    try:
        typed: Any = value if name == "mode" else int(value) if kinds[name] == "int" else float(value)
    except ValueError:
        what = "whole number" if kinds[name] == "int" else "number"
        raise SimlabError(f"/set {name} {value}: give a {what}") from None
    Knobs(**{name: typed})  # (checks it)
    return {name: typed}


def top_probability(token) -> float:
    """The model's own probability of the likeliest token where `token` was drawn (its alternatives'
    first: they are the best ones there, best first)."""
    return math.exp(token.top[0][2]) if token.top else math.exp(token.logprob)


def cut_at(tokens: list, knobs: Knobs, start: int = 0) -> int | None:
    """Where a node is cut: the first token from max(min_tokens, start) on drawn where the likeliest
    token's probability is below conf_threshold (None: nowhere)."""
    for i in range(max(knobs.min_tokens, start, 1), len(tokens)):
        if top_probability(tokens[i]) < knobs.conf_threshold:
            return i
    return None


def path_probability(session: Session, node: Node, start: str) -> float:
    """The model's own probability of the tokens from below `start` down to `node` (typed text: 1)."""
    total = 0.0
    while node.id != start and node.parent is not None:
        total += sum(node.logprobs)
        node = session.tree.get(node.parent)
    return math.exp(total)


def check_document(session: Session, start: str) -> None:
    if framing_of(session.tree.path(start)).mode != "document":
        raise SimlabError(
            "the autoloom grows documents (simlab loom --text, or a Loom tree); in a chat, /n samples replies"
        )


@dataclass
class Grown:
    nodes: list[Node]
    tokens: int
    stopped: str  # why it ended: "budget", "depth", "ended" (no branch left to grow) or "interrupted"


def grow(
    engine: Engine,
    session: Session,
    start: str,
    params: SamplingParams,
    knobs: Knobs,
    seeds: Callable[[int], int | None],
    on_node: Callable[[Node], None] | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> Grown:
    """Grow the document under node `start`; `seeds(k)` gives the first of k consecutive seeds.
    Grown again, it goes on from the branches it made before (the same fork token, the same seed)."""
    check_document(session, start)
    session.check_writable()
    made: list[Node] = []
    spent, level = 0, [session.tree.get(start)]
    for _ in range(knobs.max_depth):
        following: list[Node] = []
        for parent in level:
            if spent >= knobs.budget:
                return Grown(made, spent, "budget")
            if stopping():
                return Grown(made, spent, "interrupted")
            room = min(params.max_new_tokens, knobs.budget - spent)
            for node, new in _children(engine, session, parent, params, knobs, room, seeds, stopping):
                if new:
                    made.append(node)
                    spent += len(node.token_ids)
                    if on_node is not None:
                        on_node(node)
                grows = node.finish_reason in ("fork", "length")
                if grows and path_probability(session, node, start) >= knobs.prune:
                    following.append(node)
            if stopping():
                return Grown(made, spent, "interrupted")
        level = following
        if not level:
            return Grown(made, spent, "ended")
    return Grown(made, spent, "budget" if spent >= knobs.budget else "depth")


def _children(engine, session, parent: Node, params, knobs: Knobs, room: int, seeds, stopping) -> list:
    """(node, made now) for each branch at the parent's end: a branch grown before (the same fork
    token given, or the same seed) is gone on from, not made again."""
    fit = fit_prompt(session.tree.path(parent.id), None, engine, room + 1)
    prompt = engine.encode(fit.prompt) if isinstance(fit.prompt, str) else list(fit.prompt)
    before = [n for n in session.tree.children(parent.id) if n.role == "model" and n.token_ids]
    if knobs.mode == "sampled":
        first = seeds(knobs.children)
        seeded = {n.seed: n for n in before if not n.forced}
        if all(first + k in seeded for k in range(knobs.children)):
            return [(seeded[first + k], False) for k in range(knobs.children)]
        params = params.with_overrides(max_new_tokens=room, seed=first)
        run = engine.start(prompt, params, n=knobs.children)
        stopped = _decode_to_cuts(run, knobs, [], stopping)
        return [  # (a branch stopped before its first token has nothing to keep)
            (_save(engine, session, parent, fit, params, c, knobs, [], stopped), True)
            for c in run.completions
            if c.tokens
        ]
    q = engine.next_token_probs(prompt)
    order = sorted(range(len(q)), key=lambda t: -q[t])[: knobs.children]
    starts = [t for t in order if q[t] >= knobs.p_threshold] or order[:1]
    given = {n.token_ids[0]: n for n in before if (n.forced or {}).get("choice") == "fork point"}
    fresh = [t for t in starts if t not in given]
    first, out = (seeds(len(fresh)) if fresh else 0), []
    params = params.with_overrides(max_new_tokens=max(1, room - 1))  # (the given token is one of them)
    for token in starts:  # each fork token given, then the model writes on
        if token in given:
            out.append((given[token], False))
            continue
        forced = engine.score_tokens(prompt + [token], len(prompt))
        run = engine.start(prompt + [token], params.with_overrides(seed=first + fresh.index(token)))
        stopped = _decode_to_cuts(run, knobs, forced, stopping)
        node = _save(engine, session, parent, fit, params, run.completions[0], knobs, forced, stopped)
        out.append((node, True))
        if stopped:
            break
    return out


def _decode_to_cuts(run, knobs: Knobs, forced: list, stopping) -> bool:
    """Decode until every branch has reached its cut (or its end), then stop the run; True when it
    was stopped from outside (Ctrl-C) instead."""
    for _ in run:
        if stopping():
            run.interrupt()
            return True
        if all(
            c.finish_reason is not None or cut_at(forced + c.tokens, knobs, len(forced) + 1) is not None
            for c in run.completions
        ):
            run.interrupt()
    return False


def _save(engine, session, parent: Node, fit, params, completion: Completion, knobs, forced, stopped) -> Node:
    """A branch to its cut as a node under parent: the given fork token (forced) and what was sampled."""
    cut = cut_at(forced + completion.tokens, knobs, len(forced) + 1)
    tokens = completion.tokens if cut is None else completion.tokens[: cut - len(forced)]
    reason = completion.finish_reason if cut is None else "fork"
    if reason == "interrupted" and not stopped:  # (the run stopped for the other branches' cuts)
        reason = "length"
    ids = [t.id for t in forced] + [t.id for t in tokens]
    text = engine.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    trimmed = replace(completion, tokens=list(forced) + tokens, finish_reason=reason)
    made = node_fields(trimmed, params.with_overrides(seed=completion.seed), engine, fit.window)
    made["params"]["max_new_tokens"] = max(1, len(tokens))  # (what replay samples again: to the cut)
    if forced:
        made["forced"] = {"at": 0, "tokens": len(forced), "choice": "fork point"}
    return session.add_child(parent.id, "model", text, origin="sampled", persona=parent.persona, **made)
