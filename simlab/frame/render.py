"""A path of turns -> the exact text (or chat messages) the model reads; a sampled reply -> a turn's text.

Simulator mode: the prompt is the path's transcript (the frame, then each turn through the framing's
turn template) followed by the replying speaker's label ("Guest:"). The label's trailing space is left
for the model to write, since BPE vocabularies attach it to the next word; that space belongs to the
turn template, so it is not stored in the node's text. Chat mode: the frame becomes the system message
and the turns go through the model's own chat template.

A path is any sequence of nodes with `role`, `speaker`, `text` (and `framing` on a frame node):
session.tree.Node, which this module does not need to import.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from simlab.errors import SimlabError
from simlab.frame.framing import Framing


def framing_of(path: Sequence[Any]) -> Framing:
    """The framing the path's frame node recorded; a frame without one (a Loom tree) heads a document
    while no turn on the path has a speaker, else the plain default."""
    root = path[0] if path else None
    recorded = root.framing if root is not None and root.role == "frame" else None
    if recorded is None and root is not None and not any(node.speaker for node in path):
        return Framing(mode="document")
    return Framing.from_dict(recorded)


def is_document(path: Sequence[Any]) -> bool:
    return framing_of(path).mode == "document"


def render_node(node: Any, framing: Framing) -> str:
    """A node's text as it appears in the transcript: the frame (and any turn without a speaker) as
    it is, a note as nothing (notes are for the user), a turn through its role's template."""
    if node.role == "frame" or node.speaker is None:
        return node.text
    if node.role == "note":
        return ""
    return framing.turn(node.role, node.speaker, node.text)


PIECE = "piece"  # the tag of a node whose text goes on its parent's turn (a turn split in two nodes)


def continues(node: Any, before: Any) -> bool:
    """Whether `node` is the next piece of `before`'s turn: tagged a piece, the same speaker."""
    return (
        before is not None
        and PIECE in getattr(node, "tags", ())
        and node.speaker is not None
        and (node.role, node.speaker) == (before.role, before.speaker)
    )


def turns(path: Sequence[Any]) -> list[list[Any]]:
    """The path's nodes grouped by turn: a turn split into pieces (the Loom editor's `s`) is one
    turn, its pieces' texts joined, not a turn per piece with a label each."""
    groups: list[list[Any]] = []
    for node in path:
        if groups and continues(node, groups[-1][-1]):
            groups[-1].append(node)
        else:
            groups.append([node])
    return groups


def _whole(group: list[Any]) -> Any:
    if len(group) == 1:
        return group[0]
    first = group[0]
    return SimpleNamespace(role=first.role, speaker=first.speaker, text="".join(n.text for n in group))


def render_part(node: Any, framing: Framing, parent: Any, children: Sequence[Any]) -> str:
    """One node's part of the transcript on its own (a tree export's text per node, which a reader
    joins along a path): a piece of a split turn without the turn's head, a part that a piece goes
    on from without the turn's closing."""
    text = render_node(node, framing)
    if node.role not in ("user", "model") or node.speaker is None:
        return text
    head = framing.head(node.role, node.speaker)
    start = 0 if not continues(node, parent) else len(head)
    end = len(head) + len(node.text) if any(continues(c, node) for c in children) else len(text)
    return text[start:end]


def render_spans(path: Sequence[Any]) -> tuple[str, list[tuple[int, int]]]:
    """The transcript a path stands for, and where each node's own text lies in it."""
    framing = framing_of(path)
    parts, spans, at = [], [], 0
    for group in turns(path):
        first = group[0]
        piece = render_node(_whole(group), framing)
        if first.role in ("user", "model") and first.speaker is not None:
            start = at + len(framing.head(first.role, first.speaker))
        else:
            start = at
        for node in group:
            spans.append((start, start + (len(node.text) if piece else 0)))
            start += len(node.text) if piece else 0
        parts.append(piece)
        at += len(piece)
    return "".join(parts), spans


def open_turn(path: Sequence[Any]) -> str:
    """The transcript up to the end of the path's last node's text: the turn it is in left open, for
    the model to write on inside it (a split turn's rest), without the template's closing."""
    text, spans = render_spans(path)
    return text[: spans[-1][1]] if spans else text


def render_path(path: Sequence[Any]) -> str:
    """The transcript a path stands for."""
    framing = framing_of(path)
    return "".join(render_node(_whole(group), framing) for group in turns(path))


def chat_messages(path: Sequence[Any], speaker: str) -> list[dict[str, str]]:
    """A path as chat messages: the frame is the system message, `speaker`'s turns the assistant's."""
    messages: list[dict[str, str]] = []
    for node in map(_whole, turns(path)):
        if node.role == "frame" and node.text.strip():
            messages.append({"role": "system", "content": node.text})
        elif node.role in ("user", "model"):
            messages.append(
                {"role": "assistant" if node.speaker == speaker else "user", "content": node.text}
            )
    framing = framing_of(path)
    first_turn = 1 if messages and messages[0]["role"] == "system" else 0
    for text, depth in sorted(framing.inserts, key=lambda insert: -insert[1]):
        at = max(first_turn, len(messages) - depth)
        messages.insert(at, {"role": "system", "content": framing.insert_text(text).rstrip("\n")})
    return messages


def chat_prompt_ids(path: Sequence[Any], speaker: str, tokenizer: Any) -> list[int]:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise SimlabError(
            "this persona is in chat mode but the model has no chat template; "
            "use an instruct model or set `mode: simulator` in the persona"
        )
    ids = tokenizer.apply_chat_template(
        chat_messages(path, speaker), add_generation_prompt=True, tokenize=True
    )
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def reply_prompt(path: Sequence[Any], speaker: str | None, tokenizer: Any = None) -> str | list[int]:
    """What the model reads before replying as `speaker` after `path`: text, or ids in chat mode; a
    document's continuation reads the document as it is."""
    framing = framing_of(path)
    if framing.mode == "document":
        return render_path(path)
    if framing.mode == "chat":
        return chat_prompt_ids(path, speaker, tokenizer)
    if not framing.inserts:
        return render_path(path) + framing.label("model", speaker)
    whole = [_whole(group) for group in turns(path)]
    pieces = [render_node(node, framing) for node in whole]
    spoken = [i for i, node in enumerate(whole) if node.role in ("user", "model")]
    for text, depth in sorted(framing.inserts, key=lambda insert: -insert[1]):
        at = spoken[-depth] if 0 < depth <= len(spoken) else (len(pieces) if depth == 0 else 1)
        pieces.insert(at, framing.insert_text(text))
        spoken = [t + 1 if t >= at else t for t in spoken]
    return "".join(pieces) + framing.label("model", speaker)


def reply_text(generated: str, framing: Framing) -> str:
    """A reply's text as stored: without the label's trailing space the model wrote, and without
    trailing whitespace (the turn template writes the turn's end). A document's continuation is kept
    as the model wrote it: the document is the concatenation of its pieces."""
    if framing.mode == "document":
        return generated
    if framing.mode == "chat":
        return generated.strip()
    lead = framing.lead()
    text = generated[len(lead) :] if lead and generated.startswith(lead) else generated
    return text.rstrip()
