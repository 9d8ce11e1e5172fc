"""A sampled node's text cut at its tokens, from what the node records (no tokenizer needed).

A node keeps each token's id, log-probability and best alternatives (id, text, log-probability);
a token's own text is known when it is among its alternatives (or a server sent the texts). The
first token may carry the label's space that the stored text leaves out; tokens after the text
spelled the stop string. Exports use this: the HTML page and Loom's `generation.logprobs`.
"""

from __future__ import annotations

from simlab.session.tree import Node


def token_parts(
    node: Node, lead: str = "", decoded: list[str] | None = None
) -> list[tuple[str, bool]] | None:
    """Per token: its part of the node's text (the parts spell the text exactly), and whether that
    is the token's own recorded text. A run of tokens whose text is not recorded shares the gap up
    to the next known token: all of it on the run's first, "" on the others. None when the recorded
    texts do not fit the node's text (an edited node, say). `decoded`: the texts a tokenizer gives."""
    if not node.logprobs or len(node.top) != len(node.logprobs):
        return None
    served = decoded or (node.backend or {}).get("tokens")
    texts: list[str | None] = list(served) if served else []
    if not texts:
        for k, alts in enumerate(node.top):
            wanted = node.token_ids[k] if k < len(node.token_ids) else None
            texts.append(next((a[1] for a in alts if a[0] == wanted), None))
    text, first = node.text, texts[0] if texts else None
    at = -len(lead) if lead and first and first.startswith(lead) and not text.startswith(lead) else 0
    parts: list[tuple[str, bool]] = []
    pending = 0
    for piece in texts:
        if piece is None:
            pending += 1
            continue
        start = max(at, 0)
        if pending:  # the unknown tokens end where this one's text is next found
            where = text.find(piece, start)
            if where < 0:
                return None
            parts += [(text[start:where], False)] + [("", False)] * (pending - 1)
            pending, at, start = 0, where, where
        else:  # a token may run past the text's end (white space the turn's end writes, a stop string)
            seg, own = text[start : at + len(piece)], piece[max(-at, 0) :]
            if seg != own and not (at + len(piece) > len(text) and own.startswith(seg)):
                return None
        parts.append((text[start : max(at + len(piece), start)], True))
        at += len(piece)
    if pending:
        parts += [(text[max(at, 0) :], False)] + [("", False)] * (pending - 1)
    elif at < len(text):
        return None
    return parts


def own_tokens(texts: list[str], text: str, lead: str = "") -> int:
    """How many of a reply's tokens (their texts, in order) spell its stored text; the rest spelled
    the stop string or the white space before it. The first may carry the label's space (`lead`)."""
    full = "".join(texts)
    end = (len(lead) if lead and full.startswith(lead) and not text.startswith(lead) else 0) + len(text)
    at = 0
    for k, piece in enumerate(texts):
        if at >= end:
            return k
        at += len(piece)
    return len(texts)
