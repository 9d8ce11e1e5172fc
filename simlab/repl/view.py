"""What a face of the REPL implements to show the Chat's actions: the line REPL writes them to its
streams (repl.screen), the Loom editor draws them in its panes (repl.loom_view). The Chat decides
what happened and says it here, from whichever thread runs the action; a view never changes the
Chat's state, as a Textual worker posts messages instead of touching the UI."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from simlab.engine.results import Delta
from simlab.frame.framing import Framing
from simlab.session.tree import Node
from simlab.session.views import Style
from simlab.turns import Replies


class Progress(Protocol):
    """A wait made of steps (a persona's replay): `advance` counts them."""

    def advance(self, count: int = 1, what: str | None = None) -> None: ...


class View(Protocol):
    style: Style  # how a command colours what it says (plain where the face draws its own styles)

    def attach(self, chat) -> None:
        """The Chat this view shows (its tree and framing lay the turns out)."""

    def say(self, text: str) -> None:
        """A line of what a command answers (/tree, /info, /tokens, a transcript)."""

    def note(self, text: str) -> None:
        """A remark beside the conversation: what happened, what failed, what to do."""

    def waiting(self, text: str) -> None:
        """A wait that passes (the model is still loading): shown while it lasts, where it can go."""

    def head(self, role: str, speaker: str | None, framing: Framing | None = None) -> str:
        """What a turn's text follows on this face (its label as the template writes it)."""

    def turn(self, node: Node) -> None:
        """A node as the transcript shows it, with its place among its siblings."""

    def path(self, last: int | None = None) -> None:
        """The current path's last turns (all without `last`)."""

    def begin(self, replies: Replies, head: str | None) -> None:
        """Replies start decoding: one streamed after `head` (the text it continues on the
        screen), or several at once (head None)."""

    def reading(self, at: int, total: int) -> None:
        """A long prompt is going in: `at` of `total` tokens read."""

    def delta(self, delta: Delta, replies: Replies) -> None:
        """Text came for one of the replies (BrokenPipeError: the output is gone)."""

    def end(self, replies: Replies, failed: bool = False) -> None:
        """Decoding ended (failed: with an error, perhaps before any text)."""

    def replied(self, nodes: list[Node], replies: Replies) -> None:
        """The replies kept are saved (none: stopped before the first token), the cursor on the first."""

    def progress(self, what: str, total: int) -> AbstractContextManager[Progress]:
        """A wait of `total` steps, shown while it lasts."""
