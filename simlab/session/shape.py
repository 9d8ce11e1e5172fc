"""Reshaping a tree as Loom does, without overwriting anything: split a node in two, merge a node
with its only child.

Nodes are immutable and the file is append-only, so a reshaped node is a new sibling of the old one
(origin 'edited', `edited_from` the old one), the old one's subtree is copied under the new shape
(the copies keep their text, tokens, seeds and marks), and the
old node is hidden: `/unhide` brings the old shape back. The document each path stands for is
unchanged, so a copied reply still replays.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from simlab.errors import TreeError
from simlab.frame.render import PIECE
from simlab.session.store import Session
from simlab.session.tree import Node, new_id


def split(session: Session, node_id: str, at_char: int, at_token: int | None = None) -> tuple[Node, Node]:
    """Node -> its first `at_char` characters, with the rest as their child; returns (first, rest).
    At a token boundary (`at_token`), each part keeps its own tokens and log-probabilities."""
    with session.lock:  # one reshape at a time, whole
        return _split(session, node_id, at_char, at_token)


def _split(session: Session, node_id: str, at_char: int, at_token: int | None) -> tuple[Node, Node]:
    node = session.tree.get(node_id)
    if node.role not in ("user", "model"):
        raise TreeError("split works on a turn or a piece of the document, not the frame")
    if not 0 < at_char < len(node.text):
        raise TreeError(f"split: position {at_char} is not inside the text (1 to {len(node.text) - 1})")
    head_tokens, tail_tokens = _tokens(node, at_token)
    # a turn stays one turn: its first part does not end it, the rest goes on it (frame.render)
    first = _reshaped(node, node.text[:at_char], node.parent, **head_tokens)
    first = session.add(replace(first, finish_reason=None, tags=node.tags & {PIECE}))
    rest = _reshaped(node, node.text[at_char:], first.id, **tail_tokens)
    rest = session.add(replace(rest, tags=frozenset({PIECE}) if node.speaker is not None else frozenset()))
    _copy_children(session, node.id, rest.id)
    session.set_hidden(node.id)
    return first, rest


def merge(session: Session, node_id: str) -> Node:
    """Node and its only child as one node; returns it (the child's children are copied under it)."""
    with session.lock:
        return _merge(session, node_id)


def _merge(session: Session, node_id: str) -> Node:
    node = session.tree.get(node_id)
    children = session.tree.children(node_id)
    if len(children) != 1:
        raise TreeError(f"merge needs a node with exactly one child; this one has {len(children)}")
    [child] = children
    if node.role not in ("user", "model") or child.speaker != node.speaker:
        raise TreeError("merge joins pieces of one speaker (or of a document), not two turns")
    joined = {
        "token_ids": node.token_ids + child.token_ids if node.token_ids and child.token_ids else (),
        "logprobs": node.logprobs + child.logprobs if node.logprobs and child.logprobs else (),
        "top": node.top + child.top if node.top and child.top else (),
    }
    merged = _reshaped(node, node.text + child.text, node.parent, **joined)
    merged = session.add(replace(merged, finish_reason=child.finish_reason, tags=node.tags & {PIECE}))
    _copy_children(session, child.id, merged.id)
    session.set_hidden(node.id)
    return merged


def _tokens(node: Node, at: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    if at is None or not node.token_ids:
        none: dict[str, Any] = {"token_ids": (), "logprobs": (), "top": ()}
        return none, dict(none)
    return (
        {"token_ids": node.token_ids[:at], "logprobs": node.logprobs[:at], "top": node.top[:at]},
        {"token_ids": node.token_ids[at:], "logprobs": node.logprobs[at:], "top": node.top[at:]},
    )


def _reshaped(node: Node, text: str, parent: str | None, **tokens: Any) -> Node:
    """A new node in `node`'s place: its speaker and provenance, not its seed (the text is not one draw)."""
    return replace(
        node,
        id=new_id(),
        parent=parent,
        text=text,
        origin="edited",
        edited_from=node.id,
        params=None,
        seed=None,
        forced=None,
        tags=frozenset(),
        hidden=False,
        loom=None,
        **tokens,
    )


def _copy_children(session: Session, source: str, target: str) -> None:
    """Copy the subtree under `source` (hidden nodes too) to under `target`, depth first."""
    stack = [(child, target) for child in reversed(session.tree.children(source, include_hidden=True))]
    while stack:
        child, parent = stack.pop()
        copy = session.add(replace(child, id=new_id(), parent=parent, loom=None))
        below = session.tree.children(child.id, include_hidden=True)
        stack.extend((grandchild, copy.id) for grandchild in reversed(below))
