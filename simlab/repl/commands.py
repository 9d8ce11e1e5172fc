"""Slash commands: one table of names, arguments and help, and the dispatch of a typed line.

A line that starts with "/" is a command and is never sent to the model; "//text" sends "/text".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from simlab.errors import SimlabError
from simlab.repl.chat import SETTABLE, Chat
from simlab.repl.views import info_lines, params_text, token_lines


class Quit(Exception):
    """/quit: leave the REPL."""


@dataclass(frozen=True)
class Command:
    name: str
    args: str
    help: str
    run: Callable[[Chat, str, "Context"], None]  # (chat, the text after the name, context)


@dataclass
class Context:
    """What commands need from the terminal side: asking for text, editing it."""

    ask: Callable[[str, str], str] | None = None  # (prompt, default) -> text, or None when scripted
    edit: Callable[[str], str] | None = None  # $EDITOR, when there is one


def _one(rest: str, usage: str) -> str:
    args = rest.split()
    if len(args) != 1:
        raise SimlabError(f"usage: {usage}")
    return args[0]


def _int(rest: str, usage: str) -> int:
    try:
        return int(_one(rest, usage))
    except ValueError:
        raise SimlabError(f"usage: {usage} (a whole number)") from None


def _help(chat: Chat, rest: str, ctx: Context) -> None:
    width = max(len(f"/{c.name} {c.args}") for c in COMMANDS.values())
    for c in COMMANDS.values():
        chat.say(f"  {f'/{c.name} {c.args}':<{width}}  {c.help}")
    chat.say("  Keys: Alt+Left/Right siblings, Alt+Up parent, Alt+Down child, Esc Enter new line,")
    chat.say("  Ctrl-C stops a reply (and quits at an empty prompt), Ctrl-D quits. //text sends /text.")


def _set(chat: Chat, rest: str, ctx: Context) -> None:
    key, _, value = rest.strip().partition(" ")
    if not key:
        chat.say(params_text(chat))
        return
    if not value.strip():
        raise SimlabError(f"usage: /set KEY VALUE, KEY one of {', '.join(SETTABLE)}")
    chat.set(key, value.strip())


def _edit(chat: Chat, rest: str, ctx: Context) -> None:
    node = chat.cursor
    if rest.strip():
        text = rest.strip()
    elif ctx.edit is not None:
        text = ctx.edit(node.text)
    elif ctx.ask is not None:
        text = ctx.ask("edit> ", node.text)
    else:
        raise SimlabError("usage: /edit NEW TEXT (no editor or terminal to edit in)")
    chat.edit(text)


def _persona(chat: Chat, rest: str, ctx: Context) -> None:
    from simlab.persona import find

    chat.switch_persona(find(_one(rest, "/persona NAME (see `simlab personas list`)")))


def _tree(chat: Chat, rest: str, ctx: Context) -> None:
    from simlab.treeview import render_tree

    for line in render_tree(chat.tree, chat.style, show_hidden=rest.strip() == "all"):
        chat.say(line)


def _export(chat: Chat, rest: str, ctx: Context) -> None:
    fmt, _, target = rest.strip().partition(" ")
    chat.export(fmt, target.strip())


def _sessions(chat: Chat, rest: str, ctx: Context) -> None:
    import time

    for s in chat.store.list():
        mark = "*" if s.name == chat.session.name else " "
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.modified))
        chat.say(f"{mark} {s.name:<24} {s.nodes:>5} nodes  {when}  {' '.join(s.first_text.split())[:50]}")


def _quit(chat: Chat, rest: str, ctx: Context) -> None:
    raise Quit()


COMMANDS: dict[str, Command] = {c.name: c for c in [
    Command("help", "", "this list", _help),
    Command("set", "KEY VALUE", f"set a sampling parameter ({', '.join(SETTABLE)}; stop: a|b or 'default')",
            _set),
    Command("seed", "N|random", "seed of the next reply (then +1 per reply)",
            lambda chat, rest, ctx: chat.set_seed(_one(rest, "/seed N|random"))),
    Command("regen", "", "a new reply beside the current one", lambda chat, rest, ctx: chat.regen()),
    Command("n", "K", "K alternative replies sampled as one batch, numbered",
            lambda chat, rest, ctx: chat.alternatives(_int(rest, "/n K"))),
    Command("pick", "I", "go to alternative I of the last /n (or sibling I)",
            lambda chat, rest, ctx: chat.pick(_int(rest, "/pick I"))),
    Command("prev", "", "the previous sibling", lambda chat, rest, ctx: chat.move("prev")),
    Command("next", "", "the next sibling", lambda chat, rest, ctx: chat.move("next")),
    Command("up", "", "the parent turn", lambda chat, rest, ctx: chat.move("parent")),
    Command("down", "", "the latest child turn", lambda chat, rest, ctx: chat.move("child")),
    Command("tree", "[all]", "the whole tree, current path marked ('all': with deleted nodes)", _tree),
    Command("goto", "ID", "jump to a node (an id prefix is enough)",
            lambda chat, rest, ctx: chat.goto(_one(rest, "/goto ID"))),
    Command("edit", "[TEXT]", "edit the current turn (in $EDITOR, inline, or TEXT); the edit is a sibling",
            _edit),
    Command("continue", "", "extend the current reply", lambda chat, rest, ctx: chat.continue_reply()),
    Command("tokens", "", "the current reply's tokens by probability, with alternatives",
            lambda chat, rest, ctx: [chat.say(line) for line in token_lines(chat)]),
    Command("persona", "NAME", "replay this path's user turns under another persona, as a new branch", _persona),
    Command("bookmark", "", "bookmark the current turn (again to remove)", lambda chat, rest, ctx: chat.bookmark()),
    Command("export", "md|yaml|loom|jsonl [FILE]",
            "md: the current path as Markdown; yaml, loom: the whole tree; jsonl FILE: a session file", _export),
    Command("sessions", "", "the saved sessions", _sessions),
    Command("load", "ID", "open another saved session", lambda chat, rest, ctx: chat.load(_one(rest, "/load ID"))),
    Command("info", "", "model, device, persona, session, sampling, current node",
            lambda chat, rest, ctx: [chat.say(line) for line in info_lines(chat)]),
    Command("transcript", "", "the exact text the model reads for the current path",
            lambda chat, rest, ctx: chat.say(chat.transcript())),
    Command("trace", "on|off", "record the residual stream of each reply (see `simlab trace show`)",
            lambda chat, rest, ctx: chat.set_trace(rest.strip())),
    Command("quit", "", "leave (everything is already saved)", _quit),
]}


def handle(chat: Chat, line: str, ctx: Context | None = None) -> None:
    """Run one typed line: a command, or a user turn. Raises Quit; SimlabError for a bad command."""
    ctx = ctx or Context()
    if line.startswith("//"):
        chat.user_turn(line[1:])
        return
    if not line.startswith("/"):
        chat.user_turn(line)
        return
    parts = line[1:].split(None, 1)
    name, rest = (parts + ["", ""])[:2] if parts else ("", "")
    command = COMMANDS.get(name.lower())
    if command is None:
        close = [c for c in COMMANDS if c.startswith(name.lower()[:2])] if name else []
        hint = f" (did you mean /{close[0]}?)" if close else ""
        raise SimlabError(f"unknown command /{name}{hint}; /help lists them. Nothing was sent to the model.")
    command.run(chat, rest, ctx)
