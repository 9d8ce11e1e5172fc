"""The terminal side of the REPL: a prompt-toolkit prompt with history, completion, key bindings and
a bottom toolbar; or, when stdin is not a terminal, one user turn (or command) per input line."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import termios
import threading
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from simlab.config import invoked_as
from simlab.errors import ModelFailed, SimlabError
from simlab.persona.library import library
from simlab.repl.app_exit import ends_on_signal
from simlab.repl.commands import COMMANDS, Context, Quit, handle
from simlab.repl.state import SETTABLE, Chat
from simlab.repl.views import toolbar_text
from simlab.session.started import discarded


def banner(chat: Chat, resumed: bool, model: str = "the model") -> None:
    state = "resumed" if resumed else "new"
    if chat.loading.ready:
        info = chat.engine.info
        where = f"{info.name} on {info.device} ({info.dtype})"
    else:
        doing = "connecting" if " at http" in model else "loading in the background"
        where = f"{model} ({doing}; type away)"
    chat.view.note(
        f"simlab · {where} · persona {chat.persona_name()} · session {chat.session.name} ({state}) in "
        f"{chat.store.folder} · /help for commands"
    )


def _completer(chat: Chat):
    from prompt_toolkit.completion import Completer, Completion

    class SlashCompleter(Completer):
        def get_completions(self, document, complete_event):
            text = document.text_before_cursor
            if not text.startswith("/") or text.startswith("//"):
                return
            if " " not in text:
                for name, command in COMMANDS.items():
                    if name.startswith(text[1:]):
                        yield Completion("/" + name, start_position=-len(text), display_meta=command.help)
                return
            name, _, arg = text[1:].partition(" ")
            if " " in arg:
                return
            if name == "persona":
                options = list(library())
            elif name == "set":
                options = list(SETTABLE)
            elif name in ("load",):
                options = [s.name for s in chat.store.list()]
            elif name == "export":
                options = ["md", "yaml", "loom", "jsonl"]
            else:
                return
            for option in options:
                if option.startswith(arg):
                    yield Completion(option, start_position=-len(arg))

    return SlashCompleter()


def _bindings(editing: list[bool]):
    """The prompt's keys; `editing[0]` is True while an inline /edit asks for its text."""
    from prompt_toolkit.filters import Condition
    from prompt_toolkit.key_binding import KeyBindings

    keys = KeyBindings()

    def command(line: str):
        def run(event) -> None:
            event.app.exit(result=line)

        return run

    # Alt+arrow arrives as Escape followed by the arrow in most terminals
    keys.add("escape", "left")(command("/prev"))
    keys.add("escape", "right")(command("/next"))
    keys.add("escape", "up")(command("/up"))
    keys.add("escape", "down")(command("/down"))
    keys.add("escape", "]")(command("/steer +"))  # the strength knob: the last vector's, a step
    keys.add("escape", "[")(command("/steer -"))

    @keys.add("escape", "enter")
    def _newline(event) -> None:
        event.current_buffer.insert_text("\n")

    @keys.add("c-d", filter=Condition(lambda: editing[0]))
    def _cancel(event) -> None:  # Ctrl-D cancels an inline /edit, as Ctrl-C does (the README says so)
        event.app.exit(exception=EOFError())

    @keys.add("c-c")
    def _interrupt(event) -> None:  # clears the line; at an empty line (or in /edit) interrupts
        if event.current_buffer.text and not editing[0]:
            event.current_buffer.reset()
        else:
            event.app.exit(exception=KeyboardInterrupt())

    return keys


def run_interactive(
    chat: Chat, resumed: bool, history: Path | None = None, input=None, output=None, model: str = "the model"
) -> int:
    """The REPL on a terminal (or on prompt-toolkit's pipe input, for tests). Returns the exit code."""
    prompt = _prompt_session(chat, history, input, output)
    if not chat.loading.ready:  # the toolbar says "loading" until the model is there: redraw it then

        def loaded() -> None:
            prompt.app.invalidate()
            if chat.loading.failed and chat.exit_app is not None:
                chat.exit_app()  # a model that cannot load ends the chat now, not at the next message

        chat.loading.on_loaded(loaded)
        chat.loading.on_status(prompt.app.invalidate)  # each step of the load, in the toolbar

    ctx = _context(chat, prompt, input, output)
    banner(chat, resumed, model)
    chat.view.path(last=None if not resumed else 4)
    while chat.stopping is None:
        if chat.loading.failed:
            return _load_failed(chat)
        try:
            with ends_on_signal(chat, prompt.app, EOFError) as pre_run:
                line = prompt.prompt(_prompt_text(chat), pre_run=pre_run)
        except EOFError:
            if chat.loading.failed:
                return _load_failed(chat)
            break
        except KeyboardInterrupt:
            chat.view.note("(Ctrl-D or /quit leaves; everything is saved)")
            continue
        if chat.stopping is not None:  # the signal came as the line was entered: it is not sent
            break
        chat.view.typed(_prompt_text(chat), line)  # (prompt-toolkit erased it: a tall one lost its top)
        if not line.strip():
            if chat.cursor.role != "user":
                continue
            line = "/regen"  # Enter at a turn of yours samples a reply to it (as Loom's empty Enter)
        try:
            with _while_working(chat):
                handle(chat, line, ctx)
        except Quit:
            break
        except ModelFailed as exc:
            chat.view.note(f"simlab: {exc}")
            return 2
        except SimlabError as exc:
            chat.view.note(f"simlab: {exc}")
        except KeyboardInterrupt:
            if chat.stopping is None:
                chat.view.note("(interrupted)")
    return farewell(chat)


def _context(chat: Chat, prompt, input, output) -> Context:
    """What commands may ask of the terminal: a line of text (/edit inline), $EDITOR, the Loom."""

    def ask(message: str, default: str) -> str:  # Ctrl-C cancels it (see _bindings)
        prompt.editing[0] = True
        try:
            return prompt.prompt(message, default=default)
        finally:
            prompt.editing[0] = False

    def loom() -> None:
        from simlab.repl.loom_app import run_loom  # the full-screen app loads only when asked for

        run_loom(chat, input=input, output=output)

    return Context(ask=ask, edit=edit_in_editor if pick_editor() else None, loom=loom)


def _load_failed(chat: Chat) -> int:
    """The one line saying why the model did not load, and exit code 2."""
    try:
        chat.engine  # noqa: B018 - raises ModelFailed with the loader's own line
    except ModelFailed as exc:
        chat.view.note(f"simlab: {exc}")
    return 2


def _prompt_session(chat: Chat, history: Path | None, input, output):
    """prompt-toolkit's prompt with the input history (in memory when its file cannot be written),
    slash-command completion, the key bindings and the toolbar."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    store = InMemoryHistory()
    if history is not None:
        try:
            history.parent.mkdir(parents=True, exist_ok=True)
            store = FileHistory(str(history))
        except OSError:
            pass
    editing = [False]
    session = PromptSession(
        history=store,
        completer=_completer(chat),
        key_bindings=_bindings(editing),
        bottom_toolbar=lambda: toolbar_text(chat),
        complete_while_typing=False,
        erase_when_done=True,  # (the line goes into the transcript whole: Screen.typed)
        input=input,
        output=output,
    )
    session.editing = editing
    return session


def _prompt_text(chat: Chat) -> str:
    """The user's turn starts as the transcript writes it ("INSPECTOR. ", "> "), else "Name> "; in
    a document, what is typed is text that continues it."""
    framing = chat.framing
    if framing.mode == "document":
        return "+ "
    head = framing.head("user", framing.user)
    return head if head.strip() and "\n" not in head else f"{framing.user}> "


@contextmanager
def _while_working(chat: Chat):
    """While a command runs: Ctrl-C stops the reply being decoded and nothing else (a second one
    while the reply is saved is ignored, never ending the REPL), and keys typed are not echoed into
    the streamed text (nor is ^C); they wait for the next prompt."""

    def on_sigint(signum, frame) -> None:
        if chat.interruptible:
            raise KeyboardInterrupt
        chat.cancel_requested = True  # work made of steps (a replay) stops at the next one

    chat.cancel_requested = False

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main else None
    fd, attrs = _no_echo()
    try:
        yield
    finally:
        if attrs is not None:
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        if main:
            signal.signal(signal.SIGINT, previous)


def _no_echo():
    """Turn off the terminal's echo of typed keys (and of ^C); returns what restores it."""
    try:
        fd = sys.stdin.fileno()
        if not os.isatty(fd):
            return None, None
        attrs = termios.tcgetattr(fd)
        quiet = list(attrs)
        quiet[3] &= ~(termios.ECHO | termios.ECHOCTL)
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
        return fd, attrs
    except (OSError, ValueError, termios.error):
        return None, None


def farewell(chat: Chat, reopen: str = "chat --resume") -> int:
    """The closing line (how to open the session again: `simlab {reopen} NAME`); the exit code (128
    + the signal when one ended the REPL)."""
    if chat.session.read_only:
        chat.view.note(f"session {chat.session.name} was open read-only: nothing was written to it")
    elif discarded(chat.session, chat.keeps_empty):
        chat.view.note("nothing was said: no session kept")
    elif not chat.session.unsaved:  # else cli.chat says where the unsaved changes went
        folder = Path(chat.store.folder).resolve()
        elsewhere = (
            "" if folder == Path("sessions").resolve() else f" --sessions-dir {shlex.quote(str(folder))}"
        )
        chat.view.note(
            f"saved: session {chat.session.name} ({len(chat.tree.nodes)} nodes); "
            f"resume with: {invoked_as()} {reopen} {chat.session.name}{elsewhere}"
        )
    return 128 + chat.stopping if chat.stopping is not None else 0


def run_script(chat: Chat, lines: Iterable[str]) -> int:
    """One user turn or command per line; replies to stdout, everything else to stderr.
    Returns 2 when a line was a bad command (the rest still runs), else 0."""
    bad = False
    lines = iter(lines)
    while chat.stopping is None:
        chat.interruptible = True  # a signal may end the wait for the next line
        try:
            raw = next(lines, None)
        except KeyboardInterrupt:
            break
        finally:
            chat.interruptible = False
        if raw is None:
            break
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        try:
            handle(chat, line, Context())
        except Quit:
            break
        except SimlabError as exc:
            print(f"simlab: {exc}", file=sys.stderr)
            bad = True
        except KeyboardInterrupt:
            if chat.stopping is None:
                raise
    if chat.stopping is not None:
        return farewell(chat)
    return 2 if bad else 0


def pick_editor() -> str | None:
    return os.environ.get("VISUAL") or os.environ.get("EDITOR")


def edit_in_editor(text: str) -> str:
    """Edit text in $VISUAL/$EDITOR; returns the saved text without its final newline."""
    editor = pick_editor()
    with tempfile.NamedTemporaryFile("w+", suffix=".txt", delete=False, encoding="utf-8") as handle:
        handle.write(text)
        name = handle.name
    try:
        result = subprocess.run([*shlex.split(editor), name])
        if result.returncode != 0:
            raise SimlabError(f"the editor {editor!r} exited with {result.returncode}; nothing saved")
        with open(name, encoding="utf-8") as handle:
            edited = handle.read()
    finally:
        os.unlink(name)
    return edited[:-1] if edited.endswith("\n") else edited
