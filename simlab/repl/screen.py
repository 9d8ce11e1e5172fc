"""The line REPL's view of the Chat: each turn as the persona's template renders it (the model's exact
text, so `KEEPER. …` and `> look` look as the model reads them), its place among its siblings and
how it ended, a reply streamed as it comes, notes and progress lines on stderr. No terminal library
here: the streams are plain text files."""

from __future__ import annotations

import errno
import re
import shutil
import unicodedata
from dataclasses import replace
from typing import TextIO

from simlab.engine.results import Delta
from simlab.frame.framing import Framing
from simlab.frame.render import PIECE, turns
from simlab.repl.progress import Waiting, is_terminal
from simlab.session.tree import Node
from simlab.session.views import Style, steer_label
from simlab.turns import Replies
from simlab.turns.servers import repeated_siblings

LABEL_COLOUR = {"model": "1;32", "user": "1;34"}


class LineView:
    """The line REPL's view (repl.view.View): turns and a command's answers on `out`, notes and
    progress lines on `err`; a reply streams onto `out` as it comes."""

    def __init__(self, out: TextIO, err: TextIO | None = None, color: bool = False):
        self.out = out
        self.err = err or out
        self.style = Style(color)
        self.chat = None  # the Chat shown (attach)
        self._wrap: WordWrap | None = None  # while a reply streams to a terminal
        self._held = ""  # a streamed reply's trailing white space, written once more text follows
        self._head: str | None = None  # what the reply streaming now follows (None: several at once)
        self._streamed = False  # whether any of its text is on the line yet
        self._wait: Waiting | None = None
        self._reading = 0  # the width of a long turn's "(reading …)" after the label, erased as text comes

    def attach(self, chat) -> None:
        self.chat = chat

    def say(self, text: str = "", labels: bool = True) -> None:
        """A line on `out` (labels: a line starting `key   value` goes on under its value)."""
        write(self.out, self.laid_out(text, labels=labels) + "\n")

    def note(self, text: str) -> None:
        opened = self._head is not None and not self._streamed  # (a label on its line, no text yet)
        if opened:  # the note on lines of its own, then the label again for the reply
            self._unread()
            write(self.out, "\n")
        write(self.err, self.laid_out(self.style.dim(text), self.err) + "\n")
        if opened:
            write(self.out, self._head)

    def waiting(self, text: str) -> None:
        self.note(text)

    def progress(self, what: str, total: int) -> Waiting:
        return Waiting(what, total, stream=self.err)

    # -- turns ---------------------------------------------------------------------------------
    def head(self, role: str, speaker: str | None, framing: Framing | None = None) -> str:
        """What the template writes before a turn's text ("KEEPER. ", "> ", "" for a bare reply),
        coloured; the text follows it directly."""
        framing = framing or self.chat.framing
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
            tail = self.chat.framing.template(node.role).split("{text}", 1)[-1].rstrip("\n")
            body += tail.replace("{speaker}", node.speaker)
        return body

    def ending(self, node: Node) -> str:
        """How a sampled reply ended, for its line: " [length]" (nothing for typed turns)."""
        return self.style.dim(f" [{node.finish_reason}]") if node.finish_reason else ""

    def turn(self, node: Node) -> None:
        if node.role == "frame":
            self.say(self.style.dim(node.text.rstrip("\n")))
            return
        siblings = self.chat.tree.siblings(node.id)
        where = self.style.dim(f" [{self.chat.place(node)}]") if len(siblings) > 1 else ""
        self.say(self.turn_text(node) + self.ending(node) + where, labels=False)

    def laid_out(self, text: str, stream: TextIO | None = None, labels: bool = False) -> str:
        """Text as a terminal shows it: broken between words at its width, a line that starts with a
        label in its column (`model     …`) going on under the label's text (elsewhere as it is)."""
        if not is_terminal(stream or self.out):
            return text
        lines = []
        for line in text.split("\n"):
            label = re.match(r" *\S+ {2,}(?=\S)", _ESCAPE.sub("", line)) if labels else None
            wrap = WordWrap(shutil.get_terminal_size().columns, indent=label.end() if label else 0)
            lines.append(wrap.feed(line) + wrap.end())
        return "\n".join(lines)

    def path(self, last: int | None = None) -> None:
        """The path's last turns (all without `last`), a split turn as one line."""
        groups = turns(self.chat.path())
        for group in groups[-last:] if last else groups:
            if len(group) == 1:
                self.turn(group[0])
                continue
            whole = replace(group[-1], text="".join(n.text for n in group), tags=frozenset())
            self.say(self.turn_text(whole) + self.ending(whole), labels=False)

    def typed(self, head: str, line: str) -> None:
        """What was typed at the prompt, written into the transcript once prompt-toolkit has erased
        its input: all of it (a turn taller than the screen kept only its last rows there), laid out
        between words as replies are. (Elsewhere prompt-toolkit's output is not this stream.)"""
        if is_terminal(self.out):
            wrap = WordWrap(shutil.get_terminal_size().columns, width_of(head))
            write(self.out, head + wrap.feed(for_terminal(self.out, line)) + wrap.end() + "\n")

    # -- a reply as it is decoded -----------------------------------------------------------------
    def begin(self, replies: Replies, head: str | None) -> None:
        """One reply streams after `head`, its words laid out to a terminal's width (a word that
        would cross the edge starts the next line, where the terminal would cut it); several show
        a progress line instead."""
        self._head, self._held, self._streamed = head, "", False
        if head is None:
            self._wait = Waiting("sampling", len(replies.run.completions), stream=self.err).__enter__()
            return
        tty = is_terminal(self.out)
        self._wrap = WordWrap(shutil.get_terminal_size().columns, width_of(head)) if tty else None
        write(self.out, head)

    def reading(self, at: int, total: int) -> None:
        """A long turn going in (512 tokens or more to read): `(reading 1,024/6,000 tokens)` after
        the reply's label on a terminal, written over as it moves and erased before the reply's
        first word. (Several replies at once, or piped: nothing here.)"""
        if self._wrap is None or self._streamed:
            return
        shown = self._reading
        self._unread()
        if at < total and (shown or total - at >= 512):
            text = f" (reading {at:,}/{total:,} tokens)"
            if self._wrap.column + len(text) >= self._wrap.width:  # (a backspace goes back on one line only)
                return
            self._reading = len(text)  # (before it is written: a stop between the two still erases it)
            write(self.out, self.style.dim(text))

    def _unread(self) -> None:
        """Erase the "(reading …)" note, the cursor back where it began."""
        width, self._reading = self._reading, 0
        if width:
            write(self.out, "\b" * width + " " * width + "\b" * width)

    def delta(self, delta: Delta, replies: Replies) -> None:
        self._unread()
        if self._wait is not None:
            self._wait.follow(delta, replies.run.completions, getattr(replies.run, "max_new", None))
        if self._head is not None and delta.text:
            text = self._held + delta.text
            shown = text.rstrip()  # (a reply is stored stripped: white space waits for more text)
            self._held = text[len(shown) :]
            text = for_terminal(self.out, shown)
            self._streamed = self._streamed or bool(text)
            write(self.out, self._wrap.feed(text) if self._wrap is not None else text)

    def end(self, replies: Replies, outcome: str = "ended") -> None:
        """outcome: "ended", "failed" (an error follows) or "cut" (interrupted outside the engine)."""
        self._unread()
        wait, self._wait = self._wait, None
        if wait is not None:
            if outcome == "ended":
                wait.follow(None, replies.run.completions)  # the last branch's end
            wait.__exit__(None, None, None)
        if self._head is None:
            return
        self._head = None
        completions = replies.run.completions
        if outcome == "failed" and not any(c.text for c in completions):
            tail = self.style.dim(" [no reply]")
        else:
            ended = [f" [{c.finish_reason}]" for c in completions if c.tokens or c.text]
            tail = "".join(map(self.style.dim, ended[:1])) if outcome == "ended" else ""
            siblings = len(self.chat.tree.children(replies.parent_id)) + 1  # (with this one, once saved)
            if tail and siblings > 1 and replies.continues is None:  # (a /continue may add nothing)
                tail += self.style.dim(f" [{siblings}/{siblings}]")
        wrap, self._wrap = self._wrap, None
        write(self.out, (wrap.end(tail) if wrap is not None else tail) + "\n")

    def replied(self, nodes: list[Node], replies: Replies) -> None:
        if not nodes:
            self.note("(interrupted before the first token; nothing saved)")
        elif len(replies.run.completions) > 1:
            place = self.chat.place
            for node in nodes:
                steered = steer_label(node)
                about = self.style.dim(
                    f"(seed {node.seed}, {steered + ', ' if steered else ''}{node.finish_reason})"
                )
                self.say(f"{self.style.wrap('1', f'[{place(node)}]')} {self.turn_text(node)} {about}")
            self.note(
                f"{len(nodes)} alternatives saved; at [{place(nodes[0])}]. /pick I goes to sibling I, "
                "/next /prev step."
            )
            if same := repeated_siblings(self.chat.session, nodes):
                self.note(same)
        elif nodes[0].finish_reason == "interrupted":
            self.note("(interrupted: the partial reply is saved)")


# C0 control characters (but tab and line feed) and DEL, as the Unicode pictures of them: a model's
# text may hold ESC or BEL, which a terminal would obey (move the cursor, retitle the window, ring)
_PICTURES = {c: chr(0x2400 + c) for c in range(32) if c not in (9, 10)} | {127: "\u2421"}


def pictured(text: str) -> str:
    """Text with its control characters as their visible pictures (ESC as ␛)."""
    return text.translate(_PICTURES)


def for_terminal(stream: TextIO, text: str) -> str:
    """Text a model or a user wrote, as it may be shown on `stream`: on a terminal its control
    characters as visible pictures (ESC as ␛), elsewhere (a pipe, a file) the very text."""
    isatty = getattr(stream, "isatty", None)
    return pictured(text) if isatty is not None and isatty() else text


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

    def __init__(self, width: int, column: int = 0, indent: int = 0):
        self.width, self.column, self.word, self.space = max(width, 10), column, "", ""
        self.indent = indent if indent < self.width // 2 else 0  # where a broken line's rest starts

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
            self.column = (self.indent + wide) % self.width
            return "\n" + " " * self.indent + word
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
