"""What the REPL writes: each turn as the persona's template renders it (the model's exact text, so
`KEEPER. …` and `> look` look as the model reads them), its place among its siblings and how it
ended, and notes on stderr. No terminal library here: the streams are plain text files."""

from __future__ import annotations

import errno
import re
import shutil
import unicodedata
from dataclasses import replace
from typing import TextIO

from simlab.frame.framing import Framing
from simlab.frame.render import PIECE, turns
from simlab.frame.window import Fitted
from simlab.session.tree import Node
from simlab.session.views import Style

LABEL_COLOUR = {"model": "1;32", "user": "1;34"}


class Screen:
    """The output half of the REPL's state. Subclasses provide `tree`, `framing` and `path()`."""

    out: TextIO
    err: TextIO
    style: Style
    _save_failing: bool
    _window_noted: bool
    _wrap: WordWrap | None = None  # while a reply streams to a terminal

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
        """A turn as the model reads it, without the template's closing line ends (a later piece of
        a split turn: its text, after an ellipsis)."""
        piece = PIECE in node.tags and node.speaker is not None
        text = for_terminal(self.out, node.text)
        body = (self.style.dim("…") if piece else self.head(node.role, node.speaker)) + text
        if node.speaker is not None:
            tail = self.framing.template(node.role).split("{text}", 1)[-1].rstrip("\n")
            body += tail.replace("{speaker}", node.speaker)
        return body

    def begin_stream(self, head: str) -> str:
        """A reply starts streaming after `head`: on a terminal its words are laid out to the width
        (a word that would cross the edge starts the next line, where the terminal would cut it)."""
        isatty = getattr(self.out, "isatty", None)
        tty = isatty is not None and isatty()
        self._wrap = WordWrap(shutil.get_terminal_size().columns, width_of(head)) if tty else None
        return head

    def streamed(self, text: str) -> str:
        """Streamed reply text as it is written: on a terminal, control characters as pictures and
        long lines broken between words; elsewhere the very text."""
        text = for_terminal(self.out, text)
        return self._wrap.feed(text) if self._wrap is not None else text

    def stream_end(self, tail: str = "") -> str:
        """The last word a stream held back (a word is written once it ends), then `tail` (its
        finish marker) laid out with it."""
        wrap, self._wrap = self._wrap, None
        return wrap.end(tail) if wrap is not None else tail

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
        self.say(self.laid_out(self.turn_text(node) + self.ending(node) + where))

    def laid_out(self, text: str) -> str:
        """A turn as a terminal shows it: broken between words at its width (elsewhere as it is)."""
        isatty = getattr(self.out, "isatty", None)
        if isatty is None or not isatty():
            return text
        wrap = WordWrap(shutil.get_terminal_size().columns)
        return wrap.feed(text) + wrap.end()

    def show_path(self, last: int | None = None) -> None:
        """The path's last turns (all without `last`), a split turn as one line."""
        groups = turns(self.path())
        for group in groups[-last:] if last else groups:
            if len(group) == 1:
                self.show_turn(group[0])
                continue
            whole = replace(group[-1], text="".join(n.text for n in group), tags=frozenset())
            self.say(self.laid_out(self.turn_text(whole) + self.ending(whole)))

    # -- notes on what happened under the conversation ------------------------------------------
    def _save_problem(self, message: str) -> None:
        """The session's file refused a write (or took the backlog again): say so once per change of state."""
        if not self.session.unsaved:
            self._save_failing = False
            self.note(f"simlab: {message}")
        elif not self._save_failing:
            self._save_failing = True
            self.note(
                f"simlab: {message}; the conversation goes on in memory and is written when the disk "
                "takes it again; /export jsonl FILE writes the whole session elsewhere now"
            )

    def _note_window(self, fit: Fitted) -> None:
        """The first time older turns are left out of what the model reads, say so."""
        if fit.window and not self._window_noted:
            self._window_noted = True
            kept = sum(1 for node in fit.path if node.role in ("user", "model"))
            turns = "turn" if kept == 1 else f"{kept} turns"
            info = self.engine.info
            self.note(
                f"(the conversation is longer than {info.name}'s context of {info.context_length} tokens: "
                f"the model now reads the frame and the last {turns}; the session keeps them all, and "
                "each reply records its window)"
            )

    def _trace_failed(self, node: Node, exc: OSError) -> None:
        self.note(
            f"simlab: could not save the trace of {self.tree.short(node.id)}: {exc.strerror}; "
            "the reply is saved"
        )


# C0 control characters (but tab and line feed) and DEL, as the Unicode pictures of them: a model's
# text may hold ESC or BEL, which a terminal would obey (move the cursor, retitle the window, ring)
_PICTURES = {c: chr(0x2400 + c) for c in range(32) if c not in (9, 10)} | {127: "\u2421"}


def for_terminal(stream: TextIO, text: str) -> str:
    """Text a model or a user wrote, as it may be shown on `stream`: on a terminal its control
    characters as visible pictures (ESC as ␛), elsewhere (a pipe, a file) the very text."""
    isatty = getattr(stream, "isatty", None)
    return text.translate(_PICTURES) if isatty is not None and isatty() else text


_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # (the colours simlab itself writes)


def width_of(text: str) -> int:
    """Columns `text` takes on its last line (colours take none; wide characters two)."""
    last = _ESCAPE.sub("", text).rsplit("\n", 1)[-1]
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in last)


class WordWrap:
    """Streamed text laid out for a terminal `width` columns wide: a word that would cross the edge
    starts the next line (the terminal would cut it in two), in place of the spaces before it (a
    space kept there would take a row of its own after a full line). Only line breaks change; a
    word is held until a space or line end shows it is whole, spaces until the next word fits."""

    def __init__(self, width: int, column: int = 0):
        self.width, self.column, self.word, self.space = max(width, 10), column, "", ""

    def feed(self, text: str) -> str:
        out = []
        for ch in text:
            if ch == "\n":
                out.append(self._word() + self.space + "\n")
                self.column, self.space = 0, ""
            elif ch.isspace():
                out.append(self._word())
                self.space += ch
            else:
                self.word += ch
        return "".join(out)

    def end(self, tail: str = "") -> str:
        """The held word, then `tail` (a finish marker) laid out as one more word."""
        out = self._word()
        if tail:
            self.space, self.word = tail[: len(tail) - len(tail.lstrip())], tail.lstrip()
            out += self._word()
        return out

    def _word(self) -> str:
        word, self.word = self.word, ""
        if not word:
            return ""
        wide, space = width_of(word), self.space
        self.space = ""
        if self.column > 0 and self.column + len(space) + wide > self.width:
            self.column = wide % self.width
            return "\n" + word
        self.column += len(space) + wide
        return space + word


def write(stream: TextIO, text: str) -> None:
    """Write and flush; a terminal that hung up (EIO) is ignored: what matters then is saving."""
    try:
        stream.write(text)
        stream.flush()
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise
