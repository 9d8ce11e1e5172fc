"""What the REPL's report commands print: /info, /set with no arguments, /tokens."""

from __future__ import annotations

import math

from simlab.errors import SimlabError
from simlab.repl.state import Chat


def info_lines(chat: Chat) -> list[str]:
    info, node = chat.engine.info, chat.cursor
    depth, i, n = chat.position()
    lines = [
        f"model     {info.spec} ({info.name}, {info.revision[:12] if info.revision else '?'})",
        f"device    {info.device} {info.dtype}"
        + (f" weights {info.weights}" if info.weights != "float" else ""),
        f"persona   {chat.persona_name()} ({chat.framing.mode}; {chat.framing.user} / {chat.framing.model})",
        f"session   {chat.session.name} ({len(chat.tree.nodes)} nodes) in {chat.store.folder}",
        f"sampling  {params_text(chat)}",
        f"node      {node.id[:8]} {node.role} depth {depth} sibling {i}/{n} origin {node.origin}"
        + (f" seed {node.seed}" if node.seed is not None else "")
        + (f" finish {node.finish_reason}" if node.finish_reason else ""),
    ]
    if chat.last:
        last = chat.last
        lines.append(
            f"last      {last.tokens_per_second:.1f} tok/s, first token {last.first_token_ms:.0f} ms"
        )
        share = last.context_used / info.context_length if info.context_length else 0
        lines.append(
            f"context   {last.context_used} of {info.context_length} tokens ({share:.0%}) at the last reply"
        )
    return lines


def params_text(chat: Chat) -> str:
    seed = "random" if chat.seed is None else str(chat.seed)
    return f"{chat.params.describe()} seed {seed} stop {list(chat.params.stop)}"


def token_lines(chat: Chat) -> list[str]:
    """The current reply, each token coloured by its probability, then each token's alternatives."""
    node = chat.cursor
    served = (node.backend or {}).get("tokens")
    if node.role == "model" and node.backend and not served:
        raise SimlabError(
            "no log-probabilities from this server for this reply (it ignored `logprobs`); "
            "/tokens has nothing to show"
        )
    if node.role != "model" or not (node.token_ids or served):
        raise SimlabError("/tokens needs a sampled reply under the cursor")
    texts = served or [chat.engine.tokenizer.decode([t]) for t in node.token_ids]
    pieces = []
    for text, lp in zip(texts, node.logprobs):
        p = math.exp(lp)
        code = "32" if p >= 0.5 else "33" if p >= 0.1 else "31"
        pieces.append(chat.style.wrap(code, text) if chat.style.color else f"[{text}|{p:.2f}]")
    lines = ["".join(pieces), ""]
    if "continued" in node.tags:
        lines[1] = chat.style.dim("(a continued reply: these are the continuation's tokens)")
    for k, (text, lp, alts) in enumerate(zip(texts, node.logprobs, node.top)):
        others = "  ".join(f"{alt[1]!r} {math.exp(alt[2]):.2f}" for alt in alts)
        lines.append(f"{k:>4} {text!r:<16} {math.exp(lp):.3f}   {others}")
    return lines
