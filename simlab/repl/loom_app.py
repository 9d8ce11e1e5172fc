"""`simlab loom`: the full-screen prompt-toolkit application over a `repl.loom.Loom`.

The tree on the left (folds, the current path in bold, ★ bookmark, ✓ canonical, hidden nodes
dimmed when shown), the current branch as one text on the right (the current node's part marked,
or its tokens coloured by probability), the continuations being sampled or the siblings below,
then a line for the token under the cursor or what the last action did, and the status line.
"""

from __future__ import annotations

import re

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.data_structures import Point
from prompt_toolkit.filters import Condition
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.layout import (
    BufferControl,
    ConditionalContainer,
    Dimension,
    Float,
    FloatContainer,
    FormattedTextControl,
    HSplit,
    Layout,
    VSplit,
    Window,
)
from prompt_toolkit.mouse_events import MouseEventType
from prompt_toolkit.styles import Style
from prompt_toolkit.utils import get_cwidth
from prompt_toolkit.widgets import Frame, TextArea

from simlab.errors import SimlabError
from simlab.repl import loom_panes as panes
from simlab.repl.app_exit import ends_on_signal
from simlab.repl.loom import HELP, Loom
from simlab.repl.screen import WordWrap
from simlab.repl.state import Chat
from simlab.repl.steering import STEP, nudge
from simlab.repl.views import toolbar_text

STYLE = {
    "cursor": "reverse",
    "path": "bold",
    "hidden-node": "fg:#888888 italic",  # not "hidden": prompt-toolkit draws that class concealed
    "fold": "fg:#888888",
    "mark": "fg:ansiyellow",
    "before": "",
    "current": "underline",
    "p-high": "fg:ansigreen",
    "p-mid": "fg:ansiyellow",
    "p-low": "fg:ansired underline",
    "token-cursor": "reverse",
    "status": "reverse",
    "info": "italic",
}


def word_wrap(fragments: list, width: int, cursor_style: str, end: bool = False) -> list:
    """The fragments with a line break before each word that would cross `width` (the spaces before
    it dropped: they are only shown), and prompt-toolkit's cursor marker before the first character
    whose style has `cursor_style` (with `end`, its last), so the window scrolls to it. Longer words
    wrap where they must."""
    flat = [(style, ch) for style, text, *_ in fragments for ch in text]
    text = "".join(ch for _, ch in flat)
    styled = [i for i, (style, _) in enumerate(flat) if cursor_style in style]
    mark_at = (styled[-1] if end else styled[0]) if styled else -1
    breaks: dict[int, int] = {}  # where a break starts -> where the next line starts
    col = 0
    for m in re.finditer(r"\n|[^\S\n]+|\S+", text):
        piece = m.group()
        if piece == "\n":
            col = 0
            continue
        w = sum(get_cwidth(c) for c in piece)
        if not piece.isspace() and col + w > width and col > 0:
            j = m.start()
            while j > 0 and text[j - 1] in " \t" and j - 1 not in breaks:
                j -= 1
            breaks[j], col = m.start(), 0
        col = col + w if piece.isspace() or col + w <= width else (col + w) % max(width, 1)
    out: list = []
    i, marked = 0, False
    while i < len(flat):
        if i in breaks:
            out.append(("", "\n"))
            i = breaks[i]
            continue
        style, ch = flat[i]
        if not marked and 0 <= mark_at <= i:  # (at the next character shown, if a break dropped it)
            out.append(("[SetCursorPosition]", ""))
            marked = True
        if out and out[-1][0] == style:
            out[-1] = (style, out[-1][1] + ch)
        else:
            out.append((style, ch))
        i += 1
    return out


class LoomApp:
    def __init__(self, loom: Loom, input=None, output=None):
        self.loom = loom
        self.editing: str | None = None  # "edit" or "write" while the editor is open
        self.help = False
        self.commanding = False
        self.editor = TextArea(multiline=True, wrap_lines=True, scrollbar=True)
        self.command_line = Buffer(multiline=False, accept_handler=self._run_command)
        self.app = Application(
            layout=self._make_layout(),
            key_bindings=self._bindings(),
            style=Style.from_dict(STYLE),
            full_screen=True,
            mouse_support=True,
            input=input,
            output=output,
        )
        self.app.ttimeoutlen = 0.05  # Esc alone closes at once (no escape sequence follows)
        self.app.timeoutlen = 0.05  # Esc then a key is two keys, not Alt-key, unless typed as one
        loom.invalidate = self._changed

    def _changed(self) -> None:
        app = self.app
        if self.loom.quit and app.is_running and app.loop is not None:
            app.loop.call_soon_threadsafe(lambda: app.exit() if not app.is_done else None)
        app.invalidate()

    # -- panes ---------------------------------------------------------------------------------
    def _tree(self):
        loom, out = self.loom, []
        for node_id, fragments in loom.tree_lines():
            handler = self._clicked(node_id)
            out.extend((style, text, handler) for style, text in fragments)
            out.append(("", "\n"))
        return out

    def _clicked(self, node_id: str):
        def handler(event) -> None:
            if event.event_type == MouseEventType.MOUSE_UP:
                self.loom.goto(node_id)

        return handler

    def _tree_cursor(self) -> Point:
        ids = [node_id for node_id, _ in self.loom.tree_lines()]
        cursor = self.loom.tree.cursor
        return Point(0, ids.index(cursor) if cursor in ids else 0)

    def _sibling_cursor(self) -> Point:
        lines = self.loom.sibling_lines()
        current = next((i for i, (style, _) in enumerate(lines) if "cursor" in style), len(lines) - 1)
        return Point(0, max(current, 0))

    def _columns(self) -> int:
        return self.app.output.get_size().columns

    def _tree_width(self) -> int:
        return max(24, min(self._columns() // 3, 60))

    def _document(self) -> list:
        loom = self.loom
        loom.width = self._columns()
        width = max(10, self._columns() - self._tree_width() - 1)
        # the current node's end on screen (the newest text; a token under the cursor in the token view)
        if loom.token_view:
            return word_wrap(loom.document(), width, "token-cursor")
        return word_wrap(loom.document(), width, "current", end=True)

    def _status(self) -> str:
        loom = self.loom
        busy = f" · {loom.busy}…" if loom.busy else ""
        busy += " · read-only" if loom.chat.session.read_only else ""
        return (
            toolbar_text(loom.chat, self.app.output.get_size().columns - len(busy) - 12) + busy + "  ? help"
        )

    def _make_layout(self) -> Layout:
        container = self._layout()
        return Layout(container, focused_element=self.document_window)

    def _words(self, text: str) -> str:
        """Text laid out between words at the terminal's width (prompt-toolkit cuts words in two)."""
        wrap = WordWrap(self._columns() - 1)
        return wrap.feed(text) + wrap.end()

    def _layout(self):
        loom = self.loom
        tree = Window(
            FormattedTextControl(self._tree, get_cursor_position=self._tree_cursor, show_cursor=False),
            width=lambda: Dimension.exact(self._tree_width()),
            wrap_lines=False,
        )
        # focused while browsing, so no text buffer's bindings make Esc the start of Alt-something
        document = Window(
            FormattedTextControl(self._document, show_cursor=False, focusable=True), wrap_lines=True
        )
        self.document_window = document
        siblings = ConditionalContainer(
            Window(
                FormattedTextControl(
                    loom.sibling_lines, get_cursor_position=self._sibling_cursor, show_cursor=False
                ),
                height=lambda: Dimension.exact(min(6, max(1, len(loom.sibling_lines())))),
            ),
            Condition(lambda: bool(loom.sibling_lines())),
        )
        output = ConditionalContainer(
            Window(FormattedTextControl(lambda: self._words(loom.output)), height=Dimension(max=8)),
            Condition(lambda: bool(loom.output)),
        )
        body = HSplit(
            [
                VSplit([tree, Window(width=1, char="│", style="class:fold"), document]),
                Window(height=1, char="─", style="class:fold"),
                siblings,
                output,
                Window(
                    FormattedTextControl(lambda: self._words(loom.message)),
                    height=Dimension(min=1, max=2),
                ),
                ConditionalContainer(
                    Window(FormattedTextControl(loom.token_line), height=1, style="class:info"),
                    Condition(lambda: loom.token_view),
                ),
                Window(FormattedTextControl(self._status), height=1, style="class:status"),
                ConditionalContainer(
                    VSplit(
                        [Window(FormattedTextControl("/"), width=1), Window(BufferControl(self.command_line))]
                    ),
                    Condition(lambda: self.commanding),
                ),
            ]
        )
        return FloatContainer(body, floats=self._overlays())

    def _overlays(self) -> list[Float]:
        """The editor (e, a) and the help (?), drawn over the panes while open."""
        editor = Frame(self.editor, title=lambda: f"{self.editing}: Ctrl-S saves, Esc cancels")
        help_box = Frame(Window(FormattedTextControl(HELP)), title="simlab loom keys")
        editing = ConditionalContainer(editor, Condition(lambda: self.editing is not None))
        return [
            Float(editing, top=2, bottom=4, left=4, right=4),
            Float(ConditionalContainer(help_box, Condition(lambda: self.help))),
            *panes.floats(self.loom),
        ]

    # -- keys ----------------------------------------------------------------------------------
    def _bindings(self) -> KeyBindings:
        kb, loom = KeyBindings(), self.loom
        browsing = Condition(
            lambda: (
                self.editing is None and not self.commanding and not self.help and not panes.open_over(loom)
            )
        )
        tokens = browsing & Condition(lambda: loom.token_view)
        plain = browsing & Condition(lambda: not loom.token_view)

        def key(*keys, filter=browsing):
            return lambda handler: kb.add(*keys, filter=filter)(_saying_refusals(loom, handler))

        for keys, where in (
            (("left",), "parent"),
            (("h",), "parent"),
            (("right",), "child"),
            (("l",), "child"),
        ):
            key(*keys, filter=plain)(lambda e, w=where: loom.move(w))
        for keys, where in ((("up",), "prev"), (("k",), "prev"), (("down",), "next"), (("j",), "next")):
            key(*keys)(lambda e, w=where: loom.move(w))
        key("left", filter=tokens)(lambda e: self._step_token(-1))
        key("right", filter=tokens)(lambda e: self._step_token(1))
        key("g")(lambda e: loom.generate())
        key("+")(lambda e: self._children(1))
        key("-")(lambda e: self._children(-1))
        key("]")(lambda e: loom.say(nudge(loom.chat, STEP)))  # the steering knob (/steer)
        key("[")(lambda e: loom.say(nudge(loom.chat, -STEP)))
        key("t")(lambda e: self._tokens())
        key("f", filter=tokens)(lambda e: loom.fork_here())
        for digit in "123456789":
            key(digit, filter=tokens)(lambda e, d=int(digit): loom.fork_here(d))
        key("s")(lambda e: loom.split())
        key("m")(lambda e: loom.merge())
        panes.bind(kb, loom, key, _saying_refusals)
        key("b")(lambda e: loom.toggle("bookmark"))
        key("*")(lambda e: loom.toggle("canonical"))
        key("!")(lambda e: loom.hide())
        key("H")(lambda e: self._show_hidden())
        key("space")(lambda e: self._fold())
        key("e")(lambda e: self._open_editor("edit", loom.node.text))
        key("a")(lambda e: self._open_editor("write", ""))
        key("/")(lambda e: self._command_mode())
        key("?")(lambda e: setattr(self, "help", True))
        key("q")(lambda e: self._quit())
        kb.add("c-d", filter=browsing)(lambda e: self._quit())
        kb.add("c-c")(lambda e: self._interrupt())
        kb.add("<any>", filter=Condition(lambda: self.help))(lambda e: setattr(self, "help", False))
        kb.add("escape", filter=browsing)(lambda e: setattr(loom, "output", ""))
        editing = Condition(lambda: self.editing is not None)
        key("c-s", filter=editing)(lambda e: self._save_editor())
        kb.add("escape", filter=editing)(lambda e: self._close_editor())
        commanding = Condition(lambda: self.commanding)
        kb.add("escape", filter=commanding)(lambda e: self._command_mode(False))
        kb.add("c-c", filter=commanding)(lambda e: self._command_mode(False))
        return kb

    def _step_token(self, by: int) -> None:
        loom = self.loom
        loom.token_at = max(0, min(loom.token_at + by, len(loom.pieces()) - 1))

    def _children(self, by: int) -> None:
        self.loom.children = max(1, min(self.loom.children + by, 16))
        self.loom.say(f"g samples {self.loom.children} continuations")

    def _tokens(self) -> None:
        loom = self.loom
        loom.token_view = not loom.token_view
        loom.token_at = 0
        loom.say("token view: ← → move, f or 1-9 fork, s split, t leaves" if loom.token_view else "")

    def _show_hidden(self) -> None:
        self.loom.show_hidden = not self.loom.show_hidden
        self.loom.leave_hidden()
        self.loom.say("hidden nodes shown (dimmed)" if self.loom.show_hidden else "hidden nodes left out")

    def _fold(self) -> None:
        node = self.loom.tree.cursor
        self.loom.collapsed ^= {node}

    def _open_editor(self, what: str, text: str) -> None:
        self.loom.chat.session.check_writable()  # (read-only: refused before any typing, in one line)
        self.editing = what
        self.editor.text = text
        self.app.layout.focus(self.editor)

    def _save_editor(self) -> None:
        what, text = self.editing, self.editor.text
        self._close_editor()
        self.loom.edit(text) if what == "edit" else self.loom.write_child(text)

    def _close_editor(self) -> None:
        self.editing = None
        self.app.layout.focus(self.document_window)

    def _command_mode(self, on: bool = True) -> None:
        self.commanding = on
        self.command_line.reset()
        if on:
            self.app.layout.focus(self.command_line)
        else:
            self.app.layout.focus(self.document_window)

    def _run_command(self, buffer: Buffer) -> bool:
        line = "/" + buffer.text.lstrip("/")
        self._command_mode(False)
        if line.strip() != "/":
            self.loom.command(line)
        return False

    def _interrupt(self) -> None:
        if not self.loom.stop():
            self.loom.say("nothing is running; q quits (everything is saved)")

    def _quit(self) -> None:
        self.loom.stop()
        self.loom.wait()
        self.app.exit()

    def run(self, pre_run=None) -> None:
        self.app.run(pre_run=pre_run)


def _saying_refusals(loom: Loom, handler):
    """A key's handler whose refusal (a read-only session, say) is one line, not a traceback."""

    def safe(event):
        try:
            return handler(event)
        except SimlabError as exc:
            loom.say(str(exc))

    return safe


def run_loom(chat: Chat, children: int = 3, input=None, output=None) -> Loom:
    """Open the full-screen editor on the chat's session until the user quits; returns its state."""
    loom = Loom(chat, children)
    screen = LoomApp(loom, input=input, output=output)
    chat.loading.on_status(loom.invalidate)  # each step of a load in the status line
    chat.loading.on_loaded(loom.invalidate)  # and the line it ends with (steering, sampling) at once
    with ends_on_signal(chat, screen.app) as pre_run:  # SIGTERM or SIGHUP closes it, then the REPL
        screen.run(pre_run)
    loom.stop()
    loom.wait()
    loom.close()
    return loom
