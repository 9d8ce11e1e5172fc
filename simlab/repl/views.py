"""What the REPL's report commands print (/info, /set with no arguments) and its status line."""

from __future__ import annotations

import math
import shutil
import textwrap
from pathlib import Path

from simlab.engine.prefix import unpack
from simlab.errors import SimlabError
from simlab.repl.state import Chat
from simlab.repl.steering import describe


def kernel_text() -> str:
    from simlab.models import native  # (torch: only once a local GGUF model is loaded)

    return f"simlab kernel, {native.why()}" if native.library() else f"torch int4 kernel: {native.why()}"


def info_lines(chat: Chat) -> list[str]:
    info, node = chat.engine.info, chat.cursor
    depth, i, n = chat.position()
    local = chat.engine.capabilities.local
    if local:
        where = [
            f"model     {info.spec} ({info.name}, {info.revision[:12] if info.revision else '?'})",
            f"device    {info.device} {info.dtype}"
            + (f" weights {info.weights}" if info.weights != "float" else "")
            + (f" ({kernel_text()})" if info.weights.startswith("gguf") else ""),
            "siblings  "
            + (
                "one batch (simlab's kernel: each row its bits alone)"
                if getattr(chat.engine, "rows_alone", False)
                else "one after another (a batch would change a row's last bits)"
            ),
            "decode    "
            + (
                "lean step (the model's own ops without its modules: the same logits)"
                if getattr(chat.engine, "lean", False)
                else "the model's forward (no lean step for this architecture or dtype)"
            ),
        ]
    else:
        where = [f"model     {info.name} on the server at {info.device}"]
    lines = [
        *where,
        f"persona   {chat.persona_name()} ({chat.framing.mode}; {chat.framing.user} / {chat.framing.model})",
        f"session   {chat.session.name} ({len(chat.tree.nodes)} nodes) in {chat.store.folder}",
        f"sampling  {params_text(chat)}",
        f"node      {chat.tree.short(node.id)} {node.role} depth {depth} sibling {i}/{n} origin {node.origin}"
        + (f" seed {node.seed}" if node.seed is not None else "")
        + (f" (its first {node.forced.get('tokens')} tokens given)" if node.forced else "")
        + (f" finish {node.finish_reason}" if node.finish_reason else ""),
    ]
    if not local:
        lines += server_lines(chat.engine)
    if chat.last:
        last = chat.last
        lines.append(
            f"last      {last.tokens_per_second:.1f} tok/s, first token {waited(last.first_token_ms)}"
        )
    return lines + _context_line(chat, node, local)


def _context_line(chat: Chat, node, local: bool) -> list[str]:
    """The context the reply under the cursor used (the toolbar's figure), else the last reply's."""
    info, here = chat.engine.info, _context_at(node)
    last = chat.last.context_used if chat.last else 0
    used, at = (here, "this reply") if here else (last, "the last reply")
    label = "context  " if local else "used     "
    if used and context_known(info):
        return [f"{label} {used} of {info.context_length} tokens ({used / info.context_length:.0%}) at {at}"]
    return [f"{label} {used} tokens at {at} (the server's context: unknown)"] if used else []


def context_known(info) -> bool:
    """Whether the engine knows its context (a server that does not say leaves it unknown)."""
    return bool(info.context_length) and getattr(info, "context_from", None) != ""


def server_lines(engine) -> list[str]:
    """What counts a server's tokens, what was tried first, and where its context came from."""
    info = engine.info
    tried = "; ".join(getattr(engine, "tokenizer_tried", []))
    if engine.tokenizer is None:
        tokens = f"tokens    not counted here ({tried or 'none found'}); give --tokenizer to count them"
    else:
        tokens = f"tokens    counted by {info.tokenizer}" + (f" ({tried})" if tried else "")
    context = (
        f"{info.context_length} tokens (from {info.context_from})"
        if context_known(info)
        else "unknown: the server did not say (give --context N)"
    )
    return [tokens, f"context   {context}"]


def _context_at(node) -> int:
    """Tokens the model held at the end of a reply sampled here: the prompt it read (its recorded
    passes, which hold a forked reply's given tokens) and the tokens it sampled; 0 where the node
    does not say (a typed turn, a server's reply)."""
    passes = unpack(node.prefill) if node.role == "model" else None
    given = (node.forced or {}).get("tokens")  # (in the passes and in the reply's tokens)
    given = given if isinstance(given, int) and not isinstance(given, bool) else 0  # (a file's odd value)
    return sum(passes) + len(node.logprobs) - given if passes else 0


def context_text(used: int, info) -> str:
    if context_known(info):
        return f"context {used}/{info.context_length}"
    return f"context {used}/?" if used else ""


def params_text(chat: Chat) -> str:
    seed = "random" if chat.seed is None else str(chat.seed)
    return f"{chat.params.describe()} seed {seed} stop {list(chat.params.stop)}"


def toolbar_text(chat: Chat, width: int | None = None) -> str:
    """One line: where we are, the model, the sampling, the last reply's speed and context; the
    least needed parts go first when the terminal is narrow: first token, device, speed, model,
    persona, then the sampling; the position, the context used and the steering stay."""
    p = chat.params
    width = width or shutil.get_terminal_size((80, 24)).columns
    if not chat.loading.ready:
        if chat.loading.failed:  # the first use says why
            return f" the model did not load (the next reply says why) · {chat.persona_name()} "
        step = chat.loading.status.text
        doing = f"loading the model: {step}" if step else "loading the model…"
        return f" {doing} · {chat.persona_name()} · T {p.temperature} top-p {p.top_p} "
    info = chat.engine.info
    try:
        depth, i, n = chat.position()
        where = f"depth {depth} · {i}/{n}"
    except SimlabError:
        where = "empty"
    seed = "random" if chat.seed is None else str(chat.seed)
    last = chat.last
    # the context of the reply under the cursor (siblings differ), else of the last reply
    used = _context_at(chat.cursor) or (last.context_used if last else 0)
    parts = [  # (priority: lower stays longer, text)
        (0, f"NOT SAVED: {len(chat.session.unsaved)} change(s)" if chat.session.unsaved else ""),
        (4, Path(info.name).name if info.name.startswith(("/", "~")) else info.name),  # (a path: its file)
        (6, info.device + ("" if info.weights in ("gguf", "float") else f" {info.weights}")),  # int8, gguf-a8
        (3, chat.persona_name() or ""),
        (2, f"T {p.temperature} top-p {p.top_p} seed {seed}"),
        (1, describe(chat) if chat.steer_uses else ""),  # (what the replies are steered with stays)
        (0, where),
        (5, f"{last.tokens_per_second:.1f} tok/s" if last else ""),
        (7, f"first token {waited(last.first_token_ms)}" if last else ""),
        (1, context_text(used, info) if used else ""),
    ]
    parts = [(rank, text) for rank, text in parts if text]
    while len(parts) > 1 and len(" · ".join(t for _, t in parts)) + 2 > width:
        parts.remove(max(parts, key=lambda part: part[0]))
    return " " + " · ".join(t for _, t in parts) + " "


def preview(text: str, width: int = 60) -> str:
    """A node's text on one line (the Loom editor's tree and sibling list), cut at `width`."""
    return (flat := text.replace("\n", "⏎"))[:width] + ("…" if len(flat) > width else "")


def probability_style(logprob: float | None) -> str:
    """The Loom document's colour for a token of this log-probability."""
    if logprob is None:
        return "class:current"
    p = math.exp(logprob)
    return "class:p-high" if p >= 0.5 else "class:p-mid" if p >= 0.1 else "class:p-low"


def waited(ms: float) -> str:
    """A wait as people read it: milliseconds under 10 s (`914 ms`), else seconds (`398.9 s`)."""
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


KEYS = (  # (a key of two presses held on one line: joined by a no-break space, which wrapping keeps)
    "Keys: Alt+Left/Right siblings, Alt+Up parent, Alt+Down child, Esc\u00a0Enter new line, Alt+]\u00a0Alt+["
    " steer stronger/weaker. Ctrl-C stops a reply (the partial reply is saved) or clears the line; Ctrl-D"
    " or /quit leaves. //text sends /text."
)


def help_lines(commands: list[tuple[str, str]]) -> list[str]:
    """/help: each (command with its arguments, what it does) as argparse lays out its help, the
    descriptions in one column (a command too long for it has its own line) wrapped to the terminal
    under that column (the terminal would carry them on at the line's start), then the keys."""
    width = min(max(len(name) for name, _ in commands), 22)
    columns = max(shutil.get_terminal_size((100, 24)).columns - 1, width + 30)
    hanging = " " * (width + 4)
    lines = []
    for name, text in commands:
        first = f"  {name:<{width}}  "
        if len(name) > width:  # (its own line, the description under it)
            lines.append(f"  {name}")
            first = hanging
        lines.append(_filled(text, columns, first, hanging))
    return [*lines, _filled(KEYS, columns, "  ", "    ")]


def _filled(text: str, columns: int, first: str, rest: str) -> str:
    return textwrap.fill(text, columns, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False)
