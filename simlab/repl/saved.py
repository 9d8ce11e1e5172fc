"""/export, /sessions and /load: the session as files, and the other saved sessions."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from simlab.errors import SimlabError
from simlab.repl.state import Chat
from simlab.session import formats


def export(chat: Chat, rest: str, ctx) -> None:
    """The session (md: the current path) written to a file, or printed."""
    fmt, _, target = rest.strip().partition(" ")
    target = target.strip()
    if fmt == "jsonl":
        if not target:
            raise SimlabError("usage: /export jsonl FILE (a session file: `simlab sessions import FILE`)")
        path = chat.session.export(Path(target))
        chat.view.note(
            f"wrote {path} ({len(chat.tree.nodes)} nodes; `simlab sessions import {path}` opens it)"
        )
        return
    if fmt not in formats.FORMATS:
        raise SimlabError("usage: /export md|yaml|loom|jsonl [FILE]")
    text = formats.render(chat.session, fmt)
    if not target:
        chat.view.say(text.rstrip("\n") if fmt == "loom" else text)
        return
    path = formats.write_text(Path(target), text, "/export")
    if fmt != "md":
        chat.session.exported_changes = len(chat.session.unsaved)
    chat.view.note(f"wrote {path}")


def sessions(chat: Chat, rest: str, ctx) -> None:
    """One line per saved session, cut to the terminal's width (the current one marked *)."""
    width = shutil.get_terminal_size((80, 24)).columns
    for s in chat.store.list():
        mark = "*" if s.name == chat.session.name else " "
        when = time.strftime("%m-%d %H:%M", time.localtime(s.modified))
        line = f"{mark} {s.name:<24} {s.nodes:>5} nodes  {when}  {' '.join(s.first_text.split())}"
        chat.view.say(line if len(line) <= width else line[: width - 1] + "…")


def load(chat: Chat, rest: str, ctx) -> None:
    args = rest.split()
    if len(args) != 1:
        raise SimlabError("usage: /load ID")
    name = args[0]
    if not chat.session.safe_to_close:
        raise SimlabError(
            f"/load: session {chat.session.name!r} has {len(chat.session.unsaved)} change(s) "
            "not on disk; /export jsonl FILE first"
        )
    chat.open_session(chat.store.open(name))
    for problem in chat.session.problems:
        chat.view.note(f"warning: {problem}")
    chat.view.path()
