"""The Loom editor's view of the Chat (repl.view.View): what a command answers and the notes in the
output pane, the replies being sampled in the continuations pane as they come, a long prompt going
in and a replay's steps on the status line, what sampling saved on the message line. Each call
comes from the worker thread and only sets what the panes read; the app redraws."""

from __future__ import annotations

import io

from simlab.engine.results import Delta
from simlab.repl.screen import LineView
from simlab.session.tree import Node
from simlab.turns import Replies
from simlab.turns.servers import repeated_siblings


class PaneView(LineView):
    """Turns are laid out as the line REPL writes them, without colours: the panes draw their own."""

    def __init__(self, loom):
        super().__init__(io.StringIO(), color=False)
        self.loom = loom
        self._doing: str | None = None  # the status line before a wait was added to it

    def clear(self) -> None:
        """A new job starts: the output pane empties."""
        self.out.seek(0)
        self.out.truncate()
        self.loom.output = ""

    def say(self, text: str = "", labels: bool = True) -> None:
        self.out.write(text + "\n")  # (laid out by the pane, at its width)
        self.loom.output = self.out.getvalue().rstrip("\n")
        self.loom.invalidate()

    note = say

    def waiting(self, text: str) -> None:
        """On the status line, beside what the editor is doing, until the reply begins."""
        self._doing = self._doing or self.loom.busy
        self.loom.busy = f"{self._doing} ({text})"
        self.loom.invalidate()

    def turn(self, node: Node) -> None:
        """(The panes show the current node: nothing to add.)"""

    def path(self, last: int | None = None) -> None:
        """(The text pane shows the path: nothing to add.)"""

    def progress(self, what: str, total: int) -> Busy:
        return Busy(self.loom, what, total)

    def begin(self, replies: Replies, head: str | None) -> None:
        if self._doing:  # (a wait said on the status line has passed)
            self.loom.busy, self._doing = self._doing, None
        self.loom.streams = [""] * len(replies.run.completions)
        self.loom.invalidate()

    def reading(self, at: int, total: int) -> None:
        """A long document's prefill: no silent wait."""
        doing = f"sampling {len(self.loom.streams)}"
        self.loom.busy = f"{doing}: reading the text, {at:,}/{total:,} tokens" if at < total else doing
        self.loom.invalidate()

    def delta(self, delta: Delta, replies: Replies) -> None:
        self.loom.streams[delta.branch] += delta.text
        self.loom.invalidate()

    def end(self, replies: Replies, outcome: str = "ended") -> None:
        self.loom.streams = []

    def replied(self, nodes: list[Node], replies: Replies) -> None:
        if not nodes:
            self.loom.say("stopped before the first token; nothing saved")
            return
        cut = sum(n.finish_reason == "interrupted" for n in nodes)
        saved = f"{len(nodes)} saved"
        if cut:  # (one count of the replies: those cut short are among those saved)
            saved = f"stopped: {saved}, " + ("all" if cut == len(nodes) else f"{cut} of them") + " cut short"
        speed = replies.run.stats.tokens_per_second
        choose = "; ↑↓ chooses among them" if len(nodes) > 1 else ""
        same = repeated_siblings(self.loom.chat.session, nodes)  # (a greedy server, say)
        self.loom.say(f"{saved} ({speed:.1f} tok/s){choose}" + (f"; {same}" if same else ""))


class Busy:
    """A wait made of steps, on the status line: "replies under stage-play 2/5"."""

    def __init__(self, loom, what: str, total: int):
        self.loom, self.what, self.total, self.done = loom, what, max(total, 1), 0

    def __enter__(self) -> Busy:
        self._show()
        return self

    def __exit__(self, *exc) -> None:
        pass

    def advance(self, count: int = 1, what: str | None = None) -> None:
        self.done = min(self.total, self.done + max(count, 0))
        self.what = what or self.what
        self._show()

    def _show(self) -> None:
        self.loom.busy = f"{self.what} {self.done}/{self.total}"
        self.loom.invalidate()
