"""/tokens and /fork: a turn's tokens coloured by probability with the model's alternatives (a
sampled reply's as recorded; typed or edited text teacher-forced through the model), and Loom's
counterfactual: branch a reply at a token, with an alternative or text of your own there."""

from __future__ import annotations

import math
import shutil
import textwrap

from simlab.engine.results import TokenInfo
from simlab.errors import SimlabError
from simlab.frame.render import render_spans
from simlab.repl.state import Chat
from simlab.session.tokens import own_tokens


def token_lines(chat: Chat, node_id: str | None = None) -> list[str]:
    """A turn (the current one, or node_id), each token coloured by its probability, then each
    token's alternatives (numbered as /fork POS ALT takes them)."""
    node = chat.tree.resolve(node_id) if node_id else chat.cursor
    served = (node.backend or {}).get("tokens")
    counts_here = not chat.engine.capabilities.local and chat.engine.tokenizer is not None
    if counts_here and not served and node.role in ("user", "model") and node.text:
        return boundary_lines(chat, node)
    if node.role == "model" and node.backend and not served:
        raise SimlabError(
            "no log-probabilities from this server for this reply (it ignored `logprobs`), and "
            "nothing here counts its tokens (give --tokenizer); /tokens has nothing to show"
        )
    style = chat.view.style
    lines = ["", ""]
    if node.role == "model" and (node.token_ids or served):
        texts = served or [chat.engine.tokenizer.decode([t]) for t in node.token_ids]
        rows = list(zip(texts, node.logprobs, node.top))
        if "continued" in node.tags:
            lines[1] = style.dim("(a continued reply: these are the continuation's tokens)")
        elif node.origin == "chosen" and node.forced:
            p = 100 * node.forced.get("p", 0)
            under = "its own too" if node.forced.get("raw") else "the multiverse's were as sampled"
            lines[1] = style.dim(
                f"(kept from a multiverse, p {p:.1f}%: every token chosen, not sampled; these are the "
                f"model's own probabilities, {under})"
            )
        elif node.forced:
            lines[1] = style.dim(
                f"(branched at token {node.forced['at']}: the first {node.forced['tokens']} were given, "
                "the rest sampled)"
            )
        elif served:
            lines[1] = style.dim(served_caption(chat, node, len(served)))
    else:
        if node.id != chat.cursor.id:
            raise SimlabError(
                "/tokens ID shows a sampled reply's tokens; to score typed text, /goto it first"
            )
        rows = [(t.text, t.logprob, t.top) for t in scored(chat, node)]
        lines[1] = style.dim("(text you typed or edited, scored by the model: how surprising it is)")
    kept = _in_reply(chat, node, [text for text, _, _ in rows])
    left_out = (  # (a reply cut off in the next speaker's label does not keep the label's start)
        "stop string: ended the reply, not in its text"
        if node.finish_reason == "stop"
        else f"not in its text: a label's start or white space where the reply ended ({node.finish_reason})"
    )
    pieces = []
    for k, (text, lp, _) in enumerate(rows):
        p = math.exp(lp)
        code = "32" if p >= 0.5 else "33" if p >= 0.1 else "31"
        piece = style.wrap(code, text) if style.color else f"[{text}|{p:.2f}]"
        pieces.append(piece if k < kept else style.dim(f"({text!r})"))  # (quoted in colour too)
    lines[0] = "".join(pieces)
    columns = max(shutil.get_terminal_size((100, 24)).columns - 1, _ALTERNATIVES + 24)
    for k, (text, lp, alts) in enumerate(rows):
        others = [f"{i}:{alt[1]!r} {math.exp(alt[2]):.2f}" for i, alt in enumerate(alts, 1)]
        after = [f"({left_out})"] if k >= kept else []
        lines.append(_row(f"{k:>4} {text!r:<16} {math.exp(lp):.3f}   ", others, after, columns))
    return lines


_ALTERNATIVES = 30  # the column a row's alternatives start at, and its carried-on lines


def _row(head: str, others: list[str], notes: list[str], columns: int) -> str:
    """A token's row: `head`, then its alternatives two spaces apart, carried on under their column
    where the terminal is too narrow (an alternative is never split; a note's words may be), the
    notes last: the lines of one row, joined."""
    lines, line, pad = [], head, " " * _ALTERNATIVES
    for unit in others:
        if len(line) + 2 + len(unit) > columns and len(line) > _ALTERNATIVES:
            lines.append(line.rstrip())
            line = pad
        line += ("" if line.endswith(" ") else "  ") + unit
    for note in notes:
        gap = "" if line.endswith(" ") else "   "
        if len(line) + len(gap) + len(note) > columns and len(line) > _ALTERNATIVES:
            lines.append(line.rstrip())
            line, gap = pad, ""
        *more, line = textwrap.wrap(
            note, columns, initial_indent=line + gap, subsequent_indent=pad, break_on_hyphens=False
        )
        lines += more
    return "\n".join([*lines, line.rstrip()])


def served_caption(chat: Chat, node, count: int) -> str:
    """What a server's tokens and numbers are, as its probe found (engine.probe)."""
    found = chat.session.server_of(node)
    kind = {
        "raw": "the model's own, before the sampler",
        "after the sampler": "after its sampler (temperature and filters applied), not the model's own",
    }.get(found.logprobs_kind if found else "", "raw or after its sampler: not probed (simlab doctor)")
    return f"({count} tokens as the server split them, with the probabilities it sent: {kind})"


def boundary_lines(chat: Chat, node) -> list[str]:
    """A turn's token boundaries by the tokenizer that counts the server's tokens, without
    probabilities (the server gave none): the text with its tokens told apart, then each token."""
    tokenizer = chat.engine.tokenizer
    lead = chat.framing.lead() if chat.framing.mode == "simulator" and node.speaker else ""
    pieces = tokenizer.pieces(lead + node.text)  # as the model read it: after the label's space
    style = chat.view.style
    shades = ("36", "35") if style.color else None  # neighbours in two colours
    line = "".join(
        style.wrap(shades[k % 2], shown) if shades else f"[{shown}]"
        for k, shown in enumerate(p.text.replace("\n", "↵") for p in pieces)
    )
    lines = [
        line,
        style.dim(f"({len(pieces)} tokens by {tokenizer.source}: boundaries, no probabilities)"),
    ]
    lines += [f"{k:>4} {p.text!r:<16} id {p.id}" for k, p in enumerate(pieces)]
    return lines


def _in_reply(chat: Chat, node, texts: list[str]) -> int:
    """How many of a sampled reply's tokens spell its stored text; the rest spelled the stop string
    (or white space the turn template writes), which the reply does not keep."""
    if node.role != "model" or "continued" in node.tags:
        return len(texts)
    lead = chat.framing.lead() if chat.framing.mode == "simulator" else ""
    return own_tokens(texts, node.text, lead)


def scored(chat: Chat, node) -> list[TokenInfo]:
    """A turn's own tokens as the model reads them in its transcript, teacher-forced."""
    if node.role not in ("user", "model") or not node.text:
        raise SimlabError("/tokens needs a reply or a user turn under the cursor")
    engine = chat.engine
    if chat.framing.mode != "simulator" or not hasattr(engine, "encode_with_offsets"):
        raise SimlabError("/tokens on typed text needs a local model in simulator mode")
    transcript, spans = render_spans(chat.path())
    start, end = spans[-1]
    ids, offsets = engine.encode_with_offsets(transcript[:end])
    first = next((i for i, (a, b) in enumerate(offsets) if b > start and b > a), len(ids))
    if first == 0 or first >= len(ids):
        raise SimlabError("/tokens: this turn has no tokens of its own to score")
    if len(ids) > engine.info.context_length:
        raise SimlabError("/tokens: the path up to this turn is longer than the model's context")
    return engine.score_tokens(ids, first)


def fork(chat: Chat, rest: str) -> None:
    """`/fork POS [ALT]`: the current reply branched at token POS (as /tokens numbers them), with
    alternative ALT there (a number from /tokens, default the likeliest one not sampled) or text
    you type; the model writes on from it as a new sibling."""
    node = chat.cursor
    if node.role != "model" or not node.token_ids:
        raise SimlabError("/fork needs a sampled reply from a local model under the cursor (see /tokens)")
    pos_text, _, alt = rest.strip().partition(" ")
    try:
        at = int(pos_text)
    except ValueError:
        raise SimlabError("usage: /fork POS [ALT|TEXT] (POS: a token position from /tokens)") from None
    if not 0 <= at < len(node.token_ids):
        raise SimlabError(f"/fork {at}: this reply has tokens 0 to {len(node.token_ids) - 1}")
    alts = [a for a in node.top[at]]
    alt = alt.strip()
    if not alt:
        others = [a for a in alts if a[0] != node.token_ids[at]]
        if not others:
            raise SimlabError(f"/fork {at}: no recorded alternative there; give one: /fork {at} TEXT")
        chosen, choice = [others[0][0]], f"alternative {alts.index(others[0]) + 1}"
    elif alt.isdigit():
        if not 1 <= int(alt) <= len(alts):
            raise SimlabError(f"/fork {at} {alt}: token {at} has alternatives 1 to {len(alts)}")
        chosen, choice = [alts[int(alt) - 1][0]], f"alternative {alt}"
    else:
        text = alt[1:-1] if len(alt) > 1 and alt[0] == alt[-1] and alt[0] in "'\"" else alt  # 'quoted'
        chosen, choice = chat.engine.tokenizer.encode(text, add_special_tokens=False), "typed"
    new = chat.fork(at, chosen, choice)
    chat.view.note(
        f"branched {chat.tree.short(node.id)} at token {at} ({choice}): "
        f"{chat.tree.short(new.id)} [{chat.place(new)}]"
    )
