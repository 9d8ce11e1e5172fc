"""What the REPL's report commands print: /info, /set with no arguments."""

from __future__ import annotations

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
        f"node      {chat.tree.short(node.id)} {node.role} depth {depth} sibling {i}/{n} origin {node.origin}"
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
