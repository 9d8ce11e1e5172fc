"""Slash commands: one table of names, arguments and help, the handlers that are not the chat itself
(settings, the tree, sessions, exports), and the dispatch of a typed line.

A line that starts with "/" is a command and is never sent to the model; "//text" sends "/text".
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from simlab.engine.params import decode_escapes, parse_setting
from simlab.errors import SimlabError, needs_local
from simlab.persona.library import find
from simlab.repl.autoloom import KNOBS, grow_here, knobs_line, set_knob
from simlab.repl.multiverse import multiverse
from simlab.repl.progress import LastReply
from simlab.repl.saved import export, load, sessions
from simlab.repl.state import SETTABLE, Chat
from simlab.repl.steering import steer
from simlab.repl.tokens import fork, token_lines
from simlab.repl.view import Progress
from simlab.repl.views import help_lines, info_lines, params_text
from simlab.replay import replay_branch
from simlab.session.views import render_tree
from simlab.trace.config import TraceConfig
from simlab.turns import add_frame


class Quit(Exception):
    """/quit: leave the REPL."""


@dataclass(frozen=True)
class Command:
    name: str
    args: str
    help: str
    run: Callable[[Chat, str, Context], None]  # (chat, the text after the name, context)


@dataclass
class Context:
    """What commands need from the terminal side: asking for text, editing it."""

    ask: Callable[[str, str], str] | None = None  # (prompt, default) -> text, or None when scripted
    edit: Callable[[str], str] | None = None  # $EDITOR, when there is one
    loom: Callable[[], None] | None = None  # the full-screen tree editor, on a terminal


def _one(rest: str, usage: str) -> str:
    args = rest.split()
    if len(args) != 1:
        raise SimlabError(f"usage: {usage}")
    return args[0]


def _at_most_one(rest: str, usage: str) -> str | None:
    args = rest.split()
    if len(args) > 1:
        raise SimlabError(f"usage: {usage}")
    return args[0] if args else None


def _int(rest: str, usage: str) -> int:
    try:
        return int(_one(rest, usage))
    except ValueError:
        raise SimlabError(f"usage: {usage} (a whole number)") from None


def _help(chat: Chat, rest: str, ctx: Context) -> None:
    for line in help_lines([(f"/{c.name} {c.args}".rstrip(), c.help) for c in COMMANDS.values()]):
        chat.view.say(line)


# -- settings ---------------------------------------------------------------------------------


def _set(chat: Chat, rest: str, ctx: Context) -> None:
    """`/set KEY VALUE`: a sampling knob, or the stop strings (a|b, or 'default')."""
    key, _, value = rest.strip().partition(" ")
    value = value.strip()
    if not key:
        chat.view.say(params_text(chat))
        chat.view.say(knobs_line(chat))
        return
    if not value:
        raise SimlabError(f"usage: /set KEY VALUE, KEY one of {', '.join(SETTABLE + KNOBS)}")
    if key in KNOBS:
        return set_knob(chat, key, value)
    if key == "stop":
        stops = (
            chat.framing.stops()
            if value == "default"
            else tuple(decode_escapes(s) for s in value.split("|") if s)
        )
        chat.params = chat.params.with_overrides(stop=stops)
        if value == "default":
            chat.user_set.pop("stop", None)
        else:
            chat.user_set["stop"] = stops
        chat.view.note(f"stop = {list(stops)}")
        chat.remember()
        return
    field, number = parse_setting(key, value, KNOBS)  # (the grow settings are /set's too)
    chat.params = chat.params.with_overrides(**{field: number})
    chat.user_set[field] = number
    chat.remember()
    chat.view.note(f"{key.replace('-', '_').replace('max_new_tokens', 'max_tokens')} = {number}")


def _seed(chat: Chat, rest: str, ctx: Context) -> None:
    value = _one(rest, "/seed N|random")
    if value in ("random", "none", "off"):
        chat.seeds.next = None
        chat.remember()
        chat.view.note("seed: a fresh random seed for each reply")
        return
    try:
        seed = int(value)
    except ValueError:
        raise SimlabError(f"/seed {value}: give a whole number, or 'random'") from None
    chat.params.with_overrides(seed=seed)  # validates the range
    chat.seeds.next = seed
    chat.remember()
    chat.view.note(f"seed = {seed} (the next reply; then +1 per reply)")


def _trace(chat: Chat, rest: str, ctx: Context) -> None:
    value = rest.strip()
    if value not in ("on", "off", ""):
        raise SimlabError("usage: /trace on|off")
    if value == "off":
        chat.tracer = None
    elif value == "on" and chat.tracer is None:
        if not chat.engine.capabilities.can_trace:
            raise needs_local("/trace (the residual stream)")
        from simlab.trace.record import Tracer

        chat.tracer = Tracer(TraceConfig(), say=lambda text: chat.view.note(text))
    where = f" (files in {chat.session.path.name[:-6]}.traces/)" if chat.tracer else ""
    chat.view.note(f"trace {'on' if chat.tracer else 'off'}{where}")


# -- the tree ---------------------------------------------------------------------------------


def _pick(chat: Chat, rest: str, ctx: Context) -> None:
    i = _int(rest, "/pick I")
    choices = [s.id for s in chat.tree.siblings(chat.cursor.id)]
    if not 1 <= i <= len(choices):
        raise SimlabError(f"/pick {i}: choose 1 to {len(choices)}")
    chat.view.turn(chat.session.goto(choices[i - 1]))


def _goto(chat: Chat, rest: str, ctx: Context) -> None:
    chat.session.goto(chat.tree.resolve(_one(rest, "/goto ID")).id)
    chat.view.path(last=3)


def _toggle(tag: str, added: str, removed: str) -> Callable[[Chat, str, Context], None]:
    """A command that puts `tag` on the current turn, or takes it off again."""

    def run(chat: Chat, rest: str, ctx: Context) -> None:
        node = chat.cursor
        on = tag not in node.tags
        chat.session.set_tag(node.id, tag, on)
        chat.view.note(f"{added if on else removed} {chat.tree.short(node.id)}")

    return run


def _hide(chat: Chat, rest: str, ctx: Context) -> None:
    """Soft-delete the current turn and what grows under it; the cursor goes to its parent."""
    node = chat.cursor
    if node.parent is None:
        raise SimlabError("/hide: the frame cannot be hidden; /hide a turn below it")
    chat.session.set_hidden(node.id, True)
    chat.session.goto(node.parent)
    short = chat.tree.short(node.id)
    chat.view.note(f"hid {short} (and its branch); /tree all shows it, /unhide {short} brings it back")


def _unhide(chat: Chat, rest: str, ctx: Context) -> None:
    node = chat.tree.resolve(_one(rest, "/unhide ID (see /tree all)"))
    chat.session.set_hidden(node.id, False)
    chat.view.note(f"{chat.tree.short(node.id)} is visible again")


def _edit(chat: Chat, rest: str, ctx: Context) -> None:
    """The current turn edited as TEXT, in $EDITOR, or at an `edit>` prompt; Ctrl-C, Ctrl-D or an
    emptied text cancels it and saves nothing."""
    node = chat.cursor
    if rest.strip():
        text = rest.strip()
    elif ctx.edit is None and ctx.ask is None:
        raise SimlabError("usage: /edit NEW TEXT (no editor or terminal to edit in)")
    else:
        try:
            text = ctx.edit(node.text) if ctx.edit is not None else ctx.ask("edit> ", node.text)
        except (EOFError, KeyboardInterrupt):
            text = ""
    if not text.strip():
        chat.view.note("(edit cancelled; nothing saved)")
        return
    chat.edit(text)


def _persona(chat: Chat, rest: str, ctx: Context) -> None:
    """This path's user turns replayed under another persona, as a new branch (a new root)."""
    persona = find(_one(rest, "/persona NAME (see `simlab personas list`)"))
    chat.session.check_writable()  # (read-only: refused before anything is said to change)
    turns = [n for n in chat.path() if n.role == "user"]
    chat.apply_persona(persona, persona.stop_strings)
    if not turns:
        chat.session.goto(add_frame(chat.session, persona).id)
    else:
        chat.view.note(f"replaying {len(turns)} user turn(s) under {persona.name} ...")
        engine = chat.engine  # (waits for the model first, if it is still loading)
        sampled = [n for n in chat.path() if n.role == "model" and n.params is not None]
        with chat.view.progress(f"replies under {persona.name}", len(sampled)) as wait:
            replay_branch(
                engine,
                chat.session,
                chat.path(),
                {},
                persona=persona,
                tracer=chat.tracer,
                progress=lambda k, n: _step(chat, wait, k),
                on_run=lambda replies: setattr(chat, "last", LastReply.of(replies)),  # the toolbar's figures
            )
            wait.advance(1)
    chat.view.path()


def _step(chat: Chat, wait: Progress, k: int) -> None:
    """Between the replies of a replay: count one, or stop here if Ctrl-C asked (what is sampled
    so far stays in the new branch)."""
    if chat.cancel_requested:
        raise KeyboardInterrupt
    wait.advance(1 if k > 1 else 0)


def _tree(chat: Chat, rest: str, ctx: Context) -> None:
    for line in render_tree(chat.tree, chat.view.style, show_hidden=rest.strip() == "all"):
        chat.view.say(line)


def _loom(chat: Chat, rest: str, ctx: Context) -> None:
    if ctx.loom is None:
        raise SimlabError("/loom is full-screen and needs a terminal; `simlab loom SESSION` opens it there")
    ctx.loom()
    chat.view.path(last=4)


def _quit(chat: Chat, rest: str, ctx: Context) -> None:
    raise Quit()


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command("help", "", "this list", _help),
        Command(
            "set",
            "KEY VALUE",
            f"set a sampling parameter ({', '.join(SETTABLE)}; stop: a|b or 'default')",
            _set,
        ),
        Command("seed", "N|random", "seed of the next reply (then +1 per reply)", _seed),
        Command("regen", "", "a new reply beside the current one", lambda chat, rest, ctx: chat.regen()),
        Command(
            "n",
            "K",
            "K alternative replies sampled as one batch, numbered",
            lambda chat, rest, ctx: chat.alternatives(_int(rest, "/n K")),
        ),
        Command("pick", "I", "go to alternative I of the last /n (or sibling I)", _pick),
        Command("prev", "", "the previous sibling", lambda chat, rest, ctx: chat.move("prev")),
        Command("next", "", "the next sibling", lambda chat, rest, ctx: chat.move("next")),
        Command("up", "", "the parent turn", lambda chat, rest, ctx: chat.move("parent")),
        Command("down", "", "the child you came from, or the latest", lambda chat, r, c: chat.move("child")),
        Command("tree", "[all]", "the whole tree, current path marked ('all': with deleted nodes)", _tree),
        Command("goto", "ID", "jump to a node (an id prefix is enough)", _goto),
        Command(
            "edit",
            "[TEXT]",
            "edit the current turn (in $EDITOR, inline, or TEXT); the edit is a sibling",
            _edit,
        ),
        Command("continue", "", "extend the current reply", lambda chat, rest, ctx: chat.continue_reply()),
        Command(
            "tokens",
            "[ID]",
            "a turn's tokens by probability, with alternatives (typed text: scored)",
            lambda chat, rest, ctx: [
                chat.view.say(line) for line in token_lines(chat, _at_most_one(rest, "/tokens [ID]"))
            ],
        ),
        Command(
            "fork",
            "POS [ALT|'TEXT']",
            "branch the reply at token POS with alternative ALT (or your text); the model writes on",
            lambda chat, rest, ctx: fork(chat, rest),
        ),
        Command(
            "persona",
            "NAME",
            "replay this path's user turns under another persona, as a new branch",
            _persona,
        ),
        Command(
            "bookmark",
            "",
            "bookmark the current turn (again to remove)",
            _toggle("bookmark", "bookmarked", "bookmark removed from"),
        ),
        Command(
            "canonical",
            "",
            "mark the current turn canonical, ✓ (again to remove)",
            _toggle("canonical", "marked canonical:", "canonical mark removed from"),
        ),
        Command("hide", "", "hide the current turn and its branch (soft delete; /tree all shows it)", _hide),
        Command("unhide", "ID", "show a hidden turn again", _unhide),
        Command(
            "path", "", "the current path again, from the frame", lambda chat, rest, ctx: chat.view.path()
        ),
        Command(
            "export",
            "md|yaml|loom|jsonl [FILE]",
            "md: the current path as Markdown; yaml, loom: the whole tree; jsonl FILE: a session file",
            export,
        ),
        Command("sessions", "", "the saved sessions", sessions),
        Command("load", "ID", "open another saved session", load),
        Command(
            "info",
            "",
            "model, device, persona, session, sampling, current node",
            lambda chat, rest, ctx: [chat.view.say(line) for line in info_lines(chat)],
        ),
        Command(
            "transcript",
            "",
            "the exact text the model reads for the current path",
            lambda chat, rest, ctx: chat.view.say(chat.transcript()),
        ),
        Command(
            "trace", "on|off", "record the residual stream of each reply (see `simlab trace show`)", _trace
        ),
        Command(
            "steer",
            "NAME [STRENGTH] [@LAYERS]|+|-|off",
            "steer replies with a vector (simlab steer list); + and - (Alt+] Alt+[) turn its strength",
            lambda chat, rest, ctx: steer(chat, rest),
        ),
        Command(
            "grow",
            "",
            "grow the document from here by itself, cut where it forks (/set p_threshold ... sets how)",
            lambda chat, rest, ctx: chat.view.note(grow_here(chat, rest)),
        ),
        Command(
            "multiverse",
            "[DEPTH [CUTOFF]] [raw]|zoom N|out|keep N",
            "every continuation here above CUTOFF (default 8 tokens, 1%), exact; zoom, keep a block",
            lambda chat, rest, ctx: multiverse(chat, rest),
        ),
        Command("loom", "", "this session in the full-screen tree editor (q comes back here)", _loom),
        Command("quit", "", "leave (everything is already saved)", _quit),
    ]
}


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
        close = difflib.get_close_matches(name.lower(), list(COMMANDS), n=1, cutoff=0.6) if name else []
        close = close or ([c for c in COMMANDS if c.startswith(name.lower()[:2])] if name else [])
        hint = f" (did you mean /{close[0]}?)" if close else ""
        raise SimlabError(f"unknown command /{name}{hint}; /help lists them. Nothing was sent to the model.")
    command.run(chat, rest, ctx)
    chat.follow_root()  # a move into another tree of the session samples as its persona does
