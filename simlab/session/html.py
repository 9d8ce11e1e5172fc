"""A session as one self-contained HTML page, for sharing with someone who does not run simlab.

The page holds the whole tree as JSON and a small script (no network resources): the tree as an
outline (bookmarks ★, canonical ✓, hidden nodes behind a switch), the selected path as one text as
the model read it, the selected node's tokens coloured by probability with the alternatives on
hover, its siblings side by side, its metadata (seed, sampling, model, finish reason), and a heatmap
of its residual stream where it has a trace, and the multiverses saved at it (or at the turn its
siblings answer) as nested rectangles, zoomable. The address's #fragment is the selected node.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from simlab.frame.render import PIECE, continues, framing_of, render_part
from simlab.session import multiverse
from simlab.session.html_page import PAGE
from simlab.session.store import Session
from simlab.session.tokens import token_parts
from simlab.session.tree import Node
from simlab.session.views import turn_label


def token_spans(node: Node, lead: str) -> list[dict[str, Any]] | None:
    """The node's text cut at its tokens for the page: [{text, p, alts: [[text, p], ...]}], or None
    when its tokens do not spell its text. Tokens whose own text is not recorded (sampled outside
    the recorded alternatives) make one piece with no probability; the stop string's tokens none."""
    parts = token_parts(node, lead)
    if parts is None:
        return None
    pieces: list[dict[str, Any]] = []
    for k, (part, known) in enumerate(parts):
        if not known:
            if pieces and pieces[-1]["p"] is None:
                pieces[-1]["text"] += part
            else:
                pieces.append({"text": part, "p": None, "alts": []})
        elif part:
            alts = [[a[1], round(math.exp(a[2]), 4)] for a in node.top[k]]
            pieces.append({"text": part, "p": round(math.exp(node.logprobs[k]), 4), "alts": alts})
    return [p for p in pieces if p["text"]]


def page_data(session: Session, heatmaps: dict[str, dict] | None = None) -> dict[str, Any]:
    """What the page's script reads: every node with its rendered surroundings and its metadata."""
    tree = session.tree
    nodes = []
    framings = _framings(tree)
    for node in tree.nodes.values():
        framing = framings.get(node.id) or framing_of(tree.path(node.id))
        parent = tree.get(node.parent) if node.parent is not None else None
        piece = render_part(node, framing, parent, tree.children(node.id, include_hidden=True))
        spoken = node.role in ("user", "model") and node.speaker is not None and not continues(node, parent)
        start = len(framing.head(node.role, node.speaker)) if spoken else 0
        lead = framing.lead() if node.role == "model" and framing.mode == "simulator" else ""
        nodes.append(
            {
                "id": node.id,
                "short": tree.short(node.id),
                "parent": node.parent,
                "role": node.role,
                "speaker": node.speaker,
                "label": turn_label(node, framing) if spoken or PIECE in node.tags else "",
                "before": piece[:start],
                "text": node.text if piece else "",  # a note is not in the text the model reads
                "after": piece[start + len(node.text) :],
                "hidden": node.hidden,
                "tags": sorted(node.tags),
                "tokens": token_spans(node, lead),
                "meta": _meta(node),
                "heatmap": (heatmaps or {}).get(node.id),
            }
        )
    universes = {node_id: [_universe(m) for m in saved] for node_id, saved in tree.multiverses.items()}
    return {
        "name": session.name,
        "cursor": tree.cursor,
        "roots": [r.id for r in tree.roots],
        "nodes": nodes,
        "multiverses": universes,
    }


def _universe(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved multiverse as the page draws it: blocks {t: text, p: absolute, c: children}."""

    def block(b) -> dict[str, Any]:
        return {"t": b.text, "p": b.p, "c": [block(c) for c in b.children]}

    return {
        "depth": saved["depth"],
        "settings": multiverse.settings_line(saved),
        "covered": saved.get("covered", []),
        "blocks": [block(c) for c in multiverse.tree(saved).children],
    }


def _framings(tree) -> dict[str, Any]:
    """Each node's framing (`framing_of` its path) in one walk down from the roots: it depends only on
    the root and whether a turn on the way has a speaker, so O(nodes), not a path per node."""
    out: dict[str, Any] = {}
    made: dict[tuple[str, bool], Any] = {}
    stack = [(root, root, root if root.speaker else None) for root in tree.roots]
    while stack:
        node, root, spoken = stack.pop()  # spoken: the first turn with a speaker on the way, if any
        key = (root.id, spoken is not None)
        if key not in made:
            made[key] = framing_of([root, spoken] if spoken is not None else [root])
        out[node.id] = made[key]
        for child in tree.children(node.id, include_hidden=True):
            stack.append((child, root, spoken or (child if child.speaker else None)))
    return out


def _meta(node: Node) -> dict[str, Any]:
    meta = {
        "origin": node.origin,
        "seed": node.seed,
        "finish reason": node.finish_reason,
        "model": node.model,
        "revision": node.model_revision,
        "weights": node.weights or node.dtype,
        "persona": node.persona,
        "created": node.created,
        "sampling": node.params,
        "forked": node.forced,
        "edited from": node.edited_from,
        "tokens": len(node.token_ids) or len(node.logprobs) or None,
    }
    return {k: v for k, v in meta.items() if v not in (None, {}, ())}


def to_html(session: Session, heatmaps: dict[str, dict] | None = None) -> str:
    """The page: the template with the session's data in a JSON script element (`<` escaped, so no
    text in a node can close the element or start markup)."""
    data = json.dumps(page_data(session, heatmaps), ensure_ascii=False, default=str)
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return PAGE.replace("{{TITLE}}", html.escape(session.name)).replace("{{DATA}}", data)
