"""/grow (and G in the Loom editor): the adaptive autoloom (turns.autoloom) from the cursor, with the
knobs `/set` keeps on the session (p_threshold, conf_threshold, min_tokens, max_depth, budget,
children, mode, prune); and the order siblings are shown in (as made, or by probability)."""

from __future__ import annotations

import math

from simlab.errors import SimlabError
from simlab.repl.state import Chat
from simlab.session.tree import Node
from simlab.turns.autoloom import Knobs, check_document, grow, parse

KNOBS = tuple(Knobs.__dataclass_fields__)
ORDERS = ("made", "cumulative", "mean")  # siblings: as made; by probability (all of it, per token)


def knobs(chat: Chat) -> Knobs:
    return Knobs.of(chat.tree.settings.get("grow"))


def set_knob(chat: Chat, name: str, value: str) -> None:
    """`/set NAME VALUE` for an autoloom knob: kept on the session (--resume goes on with it)."""
    changed = {**(chat.tree.settings.get("grow") or {}), **parse(name, value)}
    chat.session.save_settings({**chat.tree.settings, "grow": changed})
    chat.view.note(f"{name} = {changed[name]} (the autoloom: /grow, G in the Loom editor)")


def knobs_line(chat: Chat) -> str:
    return "autoloom: " + ", ".join(f"{k} {v}" for k, v in knobs(chat).record().items())


def grow_here(chat: Chat, rest: str = "") -> str:
    """Grow the document from the cursor; what it made, said. Ctrl-C stops it (what grew is saved)."""
    if rest.strip():
        raise SimlabError("usage: /grow (its knobs: /set p_threshold 0.1, conf_threshold, min_tokens, ...)")
    check_document(chat.session, chat.cursor.id)
    chat.session.check_writable()
    engine, settings, start = chat.engine, knobs(chat), chat.cursor.id
    chat.cancel_requested = False
    chat.view.note(knobs_line(chat))

    def made(node: Node) -> None:
        text = " ".join(node.text.split())[:60]
        chat.view.waiting(f"grown {chat.tree.short(node.id)} ({len(node.token_ids)} tokens): {text!r}")

    grown = grow(
        engine,
        chat.session,
        start,
        chat.params,
        settings,
        chat.seeds.take,
        on_node=made,
        stopping=lambda: chat.cancel_requested or chat.stopping is not None,
    )
    why = {
        "budget": "its token budget is spent",
        "depth": f"max_depth {settings.max_depth} reached",
        "ended": "no branch is left to grow",
        "interrupted": "stopped",
    }[grown.stopped]
    return f"grew {len(grown.nodes)} nodes, {grown.tokens} tokens ({why}; all saved)"


def ordered(kids: list[Node], order: str) -> list[Node]:
    """Siblings in the order shown: as made, or most probable first (the model's own probability of
    each one's tokens in all, or per token); those without log-probabilities (typed) last."""
    if order == "made":
        return kids

    def key(node: Node) -> float:
        if not node.logprobs:
            return math.inf
        total = sum(node.logprobs)
        return -(total / len(node.logprobs) if order == "mean" else total)

    return sorted(kids, key=key)
