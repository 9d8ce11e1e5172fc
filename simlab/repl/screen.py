"""What the REPL writes: each turn as the persona's template renders it (the model's exact text, so
`KEEPER. …` and `> look` look as the model reads them), its place among its siblings and how it
ended, and notes on stderr. No terminal library here: the streams are plain text files."""

from __future__ import annotations

import errno
from typing import TextIO

from simlab.frame.framing import Framing
from simlab.session.tree import Node
from simlab.session.views import Style

LABEL_COLOUR = {"model": "1;32", "user": "1;34"}


class Screen:
    """The output half of the REPL's state. Subclasses provide `tree`, `framing` and `path()`."""

    out: TextIO
    err: TextIO
    style: Style

    def say(self, text: str = "") -> None:
        write(self.out, text + "\n")

    def note(self, text: str) -> None:
        write(self.err, self.style.dim(text) + "\n")

    def place(self, node: Node) -> str:
        """A node's position among its siblings, as the toolbar, /tree and /pick count: "2/4"."""
        siblings = [s.id for s in self.tree.siblings(node.id)]
        return f"{siblings.index(node.id) + 1}/{len(siblings)}"

    def head(self, role: str, speaker: str | None, framing: Framing | None = None) -> str:
        """What the template writes before a turn's text ("KEEPER. ", "> ", "" for a bare reply),
        coloured; the text follows it directly."""
        framing = framing or self.framing
        if speaker is None:
            return ""
        raw = framing.head(role, speaker)
        bare = raw.rstrip(" ")
        shown = self.style.wrap(LABEL_COLOUR.get(role, "1"), bare) if bare.strip() else bare
        return shown + raw[len(bare) :]

    def turn_text(self, node: Node) -> str:
        """A turn as the model reads it, without the template's closing line ends."""
        body = self.head(node.role, node.speaker) + node.text
        if node.speaker is not None:
            tail = self.framing.template(node.role).split("{text}", 1)[-1].rstrip("\n")
            body += tail.replace("{speaker}", node.speaker)
        return body

    def ending(self, node: Node) -> str:
        """How a sampled reply ended, for its line: " [length]" (nothing for typed turns)."""
        return self.style.dim(f" [{node.finish_reason}]") if node.finish_reason else ""

    def show_turn(self, node: Node) -> None:
        """A node as the transcript shows it, with its place among its siblings and how it ended."""
        if node.role == "frame":
            self.say(self.style.dim(node.text.rstrip("\n")))
            return
        siblings = self.tree.siblings(node.id)
        where = self.style.dim(f" [{self.place(node)}]") if len(siblings) > 1 else ""
        self.say(self.turn_text(node) + self.ending(node) + where)

    def show_path(self, last: int | None = None) -> None:
        path = self.path()
        for node in path[-last:] if last else path:
            self.show_turn(node)


def write(stream: TextIO, text: str) -> None:
    """Write and flush; a terminal that hung up (EIO) is ignored: what matters then is saving."""
    try:
        stream.write(text)
        stream.flush()
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise
