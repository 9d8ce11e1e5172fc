"""The multiverse of a session node, saved beside it, and a block of it kept as a real node.

A node's multiverse is the distribution of what the next reply there would be: the prompt is the one
`g` in the Loom editor and /n in the chat would sample from (a document: its continuation; a chat
reply: it and its siblings, under the turn before it; a turn of the user's: the reply to it). A
block kept ("keep this branch") becomes a reply of origin "chosen": its tokens teacher-forced so
they carry their log-probabilities, and `forced` recording the multiverse it came from, its
probability there and that every token was chosen, not sampled; replay scores it again rather than
sampling it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simlab.engine.params import SamplingParams
from simlab.engine.protocol import Engine
from simlab.engine.results import Completion
from simlab.errors import SimlabError
from simlab.frame.render import framing_of, reply_prompt, reply_text
from simlab.frame.window import fit_prompt, windowed
from simlab.session import multiverse as saved_multiverse
from simlab.session.store import Session
from simlab.session.tree import Node
from simlab.turns.replies import node_fields


@dataclass(frozen=True)
class Where:
    """Where the replies a node's multiverse draws would go: their parent, speaker and persona."""

    parent: str
    speaker: str | None
    persona: str | None


def where(session: Session, node_id: str) -> Where:
    """A document continues the node itself; a chat's model reply is one of the replies to the turn
    before it; any other node (a turn, the frame) is replied to."""
    node = session.tree.get(node_id)
    path = session.tree.path(node_id)
    framing = framing_of(path)
    if framing.mode == "document":
        return Where(node.id, None, path[0].persona)
    if node.role == "model" and node.parent is not None:
        return Where(node.parent, node.speaker, node.persona or path[0].persona)
    return Where(node.id, framing.model, path[0].persona)


def prompt_ids(engine: Engine, session: Session, at: Where, room: int) -> tuple[list[int], Any]:
    fit = fit_prompt(session.tree.path(at.parent), at.speaker, engine, room)
    prompt = fit.prompt
    return (engine.encode(prompt) if isinstance(prompt, str) else list(prompt)), fit


def grow_at(
    engine: Engine,
    session: Session,
    node_id: str,
    params: SamplingParams,
    depth: int,
    cutoff: float,
    raw: bool = False,
    save: bool = True,
) -> dict[str, Any]:
    """The multiverse of what would be sampled at a node (engine.multiverse.grow), as the session
    keeps it (session.multiverse.record), saved beside the node the replies would go under."""
    from simlab.engine.multiverse import grow  # (torch: only when a multiverse is grown)

    at = where(session, node_id)
    ids, fit = prompt_ids(engine, session, at, depth)
    if not ids:
        raise SimlabError("multiverse: the text at this node has no tokens; write something first")
    if len(ids) + depth > engine.info.context_length:
        limit = engine.info.context_length
        raise SimlabError(f"multiverse: {len(ids)} tokens and depth {depth} do not fit a context of {limit}")
    grown = grow(engine, ids, params, depth, cutoff, raw=raw)
    decode = engine.tokenizer.decode
    record = saved_multiverse.record(
        grown, decode, at.parent, len(ids), None if raw else params.as_record(), engine.info.spec
    )
    record.update(speaker=at.speaker, persona=at.persona)
    if fit.window:
        record["window"] = fit.window
    if save and not session.read_only:
        session.save_multiverse(record)
    return record


def keep(engine: Engine, session: Session, saved: dict[str, Any], ids: tuple[int, ...]) -> Node:
    """The block with these token ids (from the multiverse's root) as a reply under the node the
    multiverse grew at, spoken as its replies would be: its tokens chosen, not sampled."""
    block = saved_multiverse.find(saved_multiverse.tree(saved), tuple(ids))
    if block is None or not ids:
        raise SimlabError("keep: no such block in this multiverse")
    already = kept_before(session, saved, tuple(ids))
    if already is not None:
        return already
    session.check_writable()
    framing = framing_of(session.tree.path(saved["node"]))
    text = engine.tokenizer.decode(list(ids), skip_special_tokens=False)
    ends = [stop for stop in framing.stops() if stop and stop in text] if framing.mode != "document" else []
    if ends:  # (a reply ends there: kept whole, the next turn's label would be in the reply's text)
        raise SimlabError(
            f"keep: this block runs past where a reply ends ({ends[0]!r}); keep a block above it"
        )
    at = Where(saved["node"], saved.get("speaker"), saved.get("persona"))
    return _chosen(engine, session, at, list(ids), saved, block.p)


def kept_before(session: Session, saved: dict[str, Any], ids: tuple[int, ...]) -> Node | None:
    """The reply this block was kept as already, if it was."""
    return next(
        (
            c
            for c in session.tree.children(saved["node"], include_hidden=True)
            if c.origin == "chosen"
            and c.token_ids == tuple(ids)
            and (c.forced or {}).get("multiverse") == saved["id"]
        ),
        None,
    )


def _chosen(engine: Engine, session: Session, at: Where, ids: list[int], saved: dict, p: float) -> Node:
    prompt, fit = prompt_ids(engine, session, at, len(ids))
    tokens = engine.score_tokens(prompt + ids, len(prompt))
    text = engine.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    made = node_fields(Completion(0, None, tokens=tokens), None, engine, fit.window)  # (nothing drawn)
    return session.add_child(
        at.parent,
        "model",
        reply_text(text, framing_of(session.tree.path(at.parent))),
        speaker=at.speaker,
        origin="chosen",
        persona=at.persona,
        **made,
        forced={
            "from": saved["node"],
            "at": 0,
            "tokens": len(ids),
            "choice": "multiverse",
            "multiverse": saved["id"],
            "p": p,
            "raw": bool(saved.get("raw")),
        },
    )


def rescored(engine: Engine, session: Session, node: Node) -> int | None:
    """A kept block read again where it was kept (the window it read): the first token whose
    log-probability differs from the one recorded (None: all the same)."""
    path = session.tree.path(node.parent)
    if node.window:
        path = windowed(path, node.window.get("from", ""))
    prompt = reply_prompt(path, node.speaker, engine.tokenizer)
    ids = engine.encode(prompt) if isinstance(prompt, str) else list(prompt)
    tokens = engine.score_tokens(ids + list(node.token_ids), len(ids))
    return next((k for k, (t, lp) in enumerate(zip(tokens, node.logprobs)) if t.logprob != lp), None)


def kept_under(engine: Engine, session: Session, node: Node, at: Where) -> Node:
    """A kept block copied under another node (a replay): the same tokens, chosen, read there."""
    forced = node.forced or {}
    saved = {"node": forced.get("from"), "id": forced.get("multiverse"), "raw": forced.get("raw")}
    return _chosen(engine, session, at, list(node.token_ids), saved, forced.get("p", 0.0))
