"""The state of `simlab loom`, the full-screen tree editor, and what its panes show, with no terminal
library here: panes are lists of (style, text[, mouse handler]) fragments, which prompt-toolkit draws.

A `Loom` sits on a `Chat` (the engine, the session, the sampling settings and seeds), so the REPL,
`replay`, `compare` and the Loom export see the same tree: every action is a record in the session
file the moment it is done. Sampling runs in a worker thread, through the chat's own reply action;
while the editor is open the chat speaks through its PaneView (repl.loom_view), which fills the panes.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from simlab.errors import SimlabError, TreeError
from simlab.frame.framing import Framing
from simlab.frame.render import render_spans
from simlab.repl.autoloom import ORDERS, ordered
from simlab.repl.commands import Context, Quit, handle
from simlab.repl.loom_view import PaneView
from simlab.repl.state import Chat
from simlab.repl.tokens import fork
from simlab.repl.views import preview, probability_style
from simlab.session import shape
from simlab.session.tokens import token_parts
from simlab.session.tree import Node
from simlab.session.views import node_marks, said

HELP = """\
 ← h / → l   parent / child (the one last visited)
 ↑ k / ↓ j   previous / next sibling
 g           sample N continuations at the cursor (on a chat reply:
             its alternatives);  + / -  change N
 ] / [       steer stronger / weaker (/steer NAME puts a vector on)
 a           write text of your own under the cursor
 e           edit the current node (a new sibling; Ctrl-S saves)
 t           token view: colours by probability; ← → between tokens
 f, 1-9      fork at the token under the cursor with an alternative
 s / m       split before that token / merge with the only child
 M           the multiverse here: ↑↓, → zoom in, ← out, Enter keeps
 G / o       grow from here by itself (/set its knobs) / sibling order
 B           blind: the replies here unlabelled, shuffled; rank them
 b  *  !     bookmark ★, canonical ✓, hide/unhide; H shows hidden
 space       fold the subtree;  mouse: click a node to go there
 /           a REPL command: /set temperature 0.7, /export loom F
 Ctrl-C      stop sampling (what came is saved)
 q           quit (everything is saved as you go); ? or Esc closes"""


@dataclass
class Piece:
    """One token (or word, for text without tokens) of the current node, as the document shows it."""

    text: str
    start: int  # where it starts in the node's text
    logprob: float | None = None
    top: tuple = ()
    index: int | None = None  # the token's number (as /fork takes it), None for a word


class Loom:
    def __init__(self, chat: Chat, children: int = 3, invalidate: Callable[[], None] | None = None):
        self.chat = chat
        self.children = children  # how many continuations `g` samples
        self.invalidate = invalidate or (lambda: None)
        self.collapsed: set[str] = set()
        self.show_hidden = False
        self.token_view = False
        self.token_at = 0  # the token cursor, an index into pieces()
        self.universe_open = False  # the multiverse pane (repl.loom_multiverse) is shown
        self.blind = None  # session.blind.Blind: the blind comparison shown (repl.loom_blind)
        self.order = "made"  # siblings in the tree: as made, or by probability (repl.autoloom.ORDERS)
        self.message = ""  # one line: what the last action did
        self.output = ""  # what the last /command wrote
        self.streams: list[str] = []  # continuations being sampled, as they come
        self.busy: str | None = None  # what the worker is doing
        self.worker: threading.Thread | None = None
        self.finished = 0  # jobs the worker has ended (a test waits on it: busy is None before a job too)
        self.quit = False
        self.width = 80  # the terminal's columns, as the app last drew them
        self.view = PaneView(self)  # what the chat's actions say, while the editor is open (close)
        self._line_view, chat.view = chat.view, self.view
        self.view.attach(chat)

    def close(self) -> None:
        """The editor closes: the chat speaks through the view it had before (the line REPL's)."""
        self.chat.view = self._line_view

    # -- where we are ----------------------------------------------------------------------------
    @property
    def tree(self):
        return self.chat.tree

    @property
    def node(self) -> Node:
        return self.chat.cursor

    def say(self, text: str) -> None:
        self.message = text
        self.invalidate()

    def move(self, where: str) -> None:
        """parent, child or a sibling, among the nodes the tree pane shows (hidden ones too with H)."""
        try:
            if where in ("prev", "next") and self.order != "made":  # (in the order the pane shows)
                kids = ordered(self.tree.siblings(self.node.id, include_hidden=self.show_hidden), self.order)
                k = kids.index(self.node) + (1 if where == "next" else -1)
                if not 0 <= k < len(kids):
                    raise TreeError(f"no {'next' if where == 'next' else 'previous'} sibling")
                self.chat.session.goto(kids[k].id)
            else:
                self.chat.session.move(where, include_hidden=self.show_hidden)
            self.token_at, self.message = 0, ""  # (what the last action did is said of another node)
        except TreeError as exc:
            self.say(str(exc))

    def cycle_order(self) -> None:
        """o: siblings as made, most probable first (in all), most probable per token."""
        self.order = ORDERS[(ORDERS.index(self.order) + 1) % len(ORDERS)]
        self.say(f"siblings: {self.order}" + (" probability first" if self.order != "made" else ""))

    def leave_hidden(self) -> None:
        """With hidden nodes left out, a cursor on one (or under one) goes up to where it hangs."""
        path = self.chat.path()
        first = next((i for i, node in enumerate(path) if node.hidden), None)
        if first is not None and not self.show_hidden:
            self.goto(path[first].parent if first else path[0].id)

    def goto(self, node_id: str) -> None:
        self.chat.session.goto(node_id)
        self.chat.follow_root()
        self.token_at = 0
        self.invalidate()

    # -- the worker --------------------------------------------------------------------------------
    def _start(self, what: str, job: Callable[[], str | None]) -> bool:
        """Run job in the worker thread (one at a time); its return is the message shown after."""
        if self.busy:
            self.say(f"still {self.busy}; Ctrl-C stops it")
            return False
        self.busy, self.message = what, ""
        self.chat.cancel_requested = False
        self.view.clear()
        self.invalidate()

        def work() -> None:
            message = None
            try:
                message = job()
            except Quit:
                self.quit = True
            except SimlabError as exc:
                message = str(exc)
            except Exception as exc:  # noqa: BLE001 -- shown in the status line, the app goes on
                message = f"simlab: {type(exc).__name__}: {exc}"
            finally:
                self.busy = None
                self.streams = []
                self.finished += 1
            if message is not None:
                self.say(message)
            self.invalidate()

        self.worker = threading.Thread(target=work, name="simlab-loom", daemon=True)
        self.worker.start()
        return True

    def stop(self) -> bool:
        """Ctrl-C: stop the sampling in progress (what came is saved), or a replay at its next
        reply; False when nothing runs."""
        return self.chat.interrupt() or self.busy is not None

    def wait(self, timeout: float = 60) -> None:
        if self.worker is not None:
            self.worker.join(timeout)

    # -- sampling ----------------------------------------------------------------------------------
    def generate(self) -> bool:
        """`children` continuations at the cursor, streamed (a reply in a chat: its alternatives)."""
        node = self.node
        document = self.chat.framing.mode == "document"
        parent = node.parent if not document and node.role == "model" else node.id
        k = self.children
        # (the reply says what came of it; an empty list, nothing saved, was once shown over that)
        return self._start(f"sampling {k}", lambda: [self.chat.reply(parent, k), None][1])

    def fork_here(self, alternative: int | None = None) -> bool:
        """Loom's counterfactual: the reply again from the token under the cursor, with an alternative."""
        piece = self.pieces()[self.token_at] if self.token_view and self.pieces() else None
        if piece is None or piece.index is None:
            self.say("f forks at a sampled token: press t for the token view and move to one")
            return False
        rest = f"{piece.index}" + (f" {alternative}" if alternative else "")
        return self.command(f"/fork {rest}", lambda: fork(self.chat, rest))

    def command(self, line: str, job: Callable[[], None] | None = None) -> bool:
        """A REPL slash command, run in the worker; what it says goes to the output pane."""

        def run() -> str | None:
            job() if job is not None else handle(self.chat, line, Context())
            return None if self.output or self.message else f"{line}: done"

        return self._start(line, run)

    # -- editing the tree --------------------------------------------------------------------------
    def write_child(self, text: str) -> None:
        """Text of your own under the cursor (in a chat: a user turn)."""
        if text:
            node = self.chat.session.add_child(
                self.node.id,
                "user",
                text,
                speaker=self.chat.speaker("user"),
                persona=self.chat.persona_name(),
            )
            self.goto(node.id)

    def edit(self, text: str) -> None:
        node = self.node
        if node.role == "frame" and self.chat.framing.mode != "document":
            self.say("the frame belongs to the persona; edit a turn")
        elif text != node.text:
            new = self.chat.session.edit(node.id, text)
            self.goto(new.id)
            self.say("edited: a sibling of the old text, which stays in the tree")

    def split(self) -> None:
        pieces = self.pieces()
        if not self.token_view or not 0 < self.token_at < len(pieces):
            self.say("s splits before the token under the cursor: press t, move right of the first token")
            return
        piece = pieces[self.token_at]
        try:
            first, rest = shape.split(self.chat.session, self.node.id, piece.start, piece.index)
        except TreeError as exc:
            return self.say(str(exc))
        self.goto(rest.id)
        self.token_view = False
        self.say("split in two (the old node is hidden; H shows it)")

    def merge(self) -> None:
        try:
            merged = shape.merge(self.chat.session, self.node.id)
        except TreeError as exc:
            return self.say(str(exc))
        self.goto(merged.id)
        self.say("merged with its child (the old nodes are hidden; H shows them)")

    def toggle(self, tag: str) -> None:
        node = self.node
        if node.role == "frame":
            return self.say("mark a turn or a continuation, not the frame")
        on = tag not in node.tags
        self.chat.session.set_tag(node.id, tag, on)
        self.say(f"{tag} {'set' if on else 'removed'}")

    def hide(self) -> None:
        node = self.node
        if node.role == "frame":
            return self.say("the frame cannot be hidden")
        self.chat.session.set_hidden(node.id, not node.hidden)
        if not node.hidden and not self.show_hidden:
            self.move("parent")
        self.say("hidden (H shows hidden nodes; ! again unhides)" if not node.hidden else "shown again")

    # -- what the panes show (read under the session's lock: the worker adds nodes meanwhile) ------
    def pieces(self) -> list[Piece]:
        with self.chat.session.lock:
            return self._pieces()

    def tree_lines(self) -> list[tuple[str, list]]:
        with self.chat.session.lock:
            return self._tree_lines()

    def document(self) -> list[tuple[str, str]]:
        with self.chat.session.lock:
            return self._document()

    def sibling_lines(self) -> list[tuple[str, str]]:
        with self.chat.session.lock:
            return self._sibling_lines()

    def _pieces(self) -> list[Piece]:
        """The current node's tokens (with probabilities) when its tokens spell its text, else words."""
        node = self.node
        framing = self.chat.framing
        lead = framing.lead() if node.role == "model" and framing.mode == "simulator" else ""
        parts = token_parts(node, lead, self._decoded(node))
        if parts:
            out, at = [], 0
            for k, (part, _) in enumerate(parts):
                if part:  # the stop string's tokens have no part of the text
                    out.append(Piece(part, at, node.logprobs[k], node.top[k], k))
                at += len(part)
            return out
        return [Piece(m.group(), m.start()) for m in re.finditer(r"\s*\S+|\s+", node.text)]

    def _decoded(self, node: Node) -> list[str] | None:
        """Each token's text from the model's tokenizer, once it has loaded (else the alternatives')."""
        if not node.token_ids or node.backend or not self.chat.loading.ready:
            return None
        return [self.chat.engine.tokenizer.decode([t]) for t in node.token_ids]

    def _tree_lines(self) -> list[tuple[str, list]]:
        """(node id, fragments) per visible line: depth, fold mark, marks, a preview of the text."""
        on_path = {n.id for n in self.chat.path()}
        lines: list[tuple[str, list]] = []
        # indented two columns a level, at most so far that 14 columns of the pane stay for the text
        deepest = max(1, (max(24, min(self.width // 3, 60)) - 16) // 2)
        # each tree's turns labelled as its frame's template writes them ("KEEPER.", as the chat does)
        roots = [r for r in reversed(self.tree.roots) if self.show_hidden or not r.hidden]
        stack = [(r, 0, Framing.from_dict(r.framing) if r.role == "frame" else None) for r in roots]
        while stack:
            node, depth, framing = stack.pop()
            kids = ordered(self.tree.children(node.id, include_hidden=self.show_hidden), self.order)
            fold = "▸" if kids and node.id in self.collapsed else "▾" if kids else "·"
            marks = node_marks(node)
            style = (
                "class:cursor" if node.id == self.tree.cursor else "class:path" if node.id in on_path else ""
            )
            if node.hidden:
                style += " class:hidden-node"
            head = said(node, framing) if node.speaker and node.role in ("user", "model") else ""
            text = head + (
                preview(node.text.lstrip() if head.endswith(" ") else node.text, self.width) or "(empty)"
            )
            lines.append(
                (
                    node.id,
                    [
                        ("class:fold", "  " * min(depth, deepest) + fold + " "),
                        ("class:mark", marks),
                        (style, text),
                    ],
                )
            )
            if node.id not in self.collapsed:
                stack.extend((kid, depth + 1, framing) for kid in reversed(kids))
        return lines

    def _document(self) -> list[tuple[str, str]]:
        """The current branch as one text; the current node's part marked, or its tokens coloured."""
        path = self.chat.path()
        text, spans = render_spans(path)
        start, end = spans[-1] if spans else (len(text), len(text))
        out = [("class:before", text[:start])]
        if self.token_view:
            for k, piece in enumerate(self.pieces()):
                shown = self.node.text[piece.start : piece.start + len(piece.text)] or piece.text
                style = probability_style(piece.logprob) + (
                    " class:token-cursor" if k == self.token_at else ""
                )
                out.append((style, shown))
            covered = sum(len(p.text) for p in self.pieces())
            out.append(("class:current", text[start + min(covered, end - start) : end]))
        else:
            out.append(("class:current", text[start:end]))
        out.append(("class:before", text[end:]))
        return out

    def token_line(self) -> str:
        """The token under the cursor: its probability and the alternatives (f forks with one)."""
        pieces = self.pieces()
        if not self.token_view or not pieces:
            return ""
        piece = pieces[min(self.token_at, len(pieces) - 1)]
        if piece.logprob is None:
            return f"word {self.token_at + 1}/{len(pieces)} {piece.text!r} (no probabilities recorded here)"
        alts = "  ".join(f"{i}:{a[1]!r} {math.exp(a[2]):.2f}" for i, a in enumerate(piece.top, 1))
        token, p = self._token_text(piece), math.exp(piece.logprob)
        return f"token {piece.index} {token!r} p={p:.2f}   {alts}   (f or 1-9 forks)"

    def _token_text(self, piece: Piece) -> str:
        """The token's text as sampled (a reply's first with the label's space: ' Yes', as ' I')."""
        node, k = self.node, piece.index
        texts = self._decoded(node) or (node.backend or {}).get("tokens") or []
        wanted = node.token_ids[k] if k < len(node.token_ids) else None
        chosen = next((a[1] for a in node.top[k] if wanted is not None and a[0] == wanted), piece.text)
        return texts[k] if k < len(texts) and texts[k] else chosen

    def _sibling_lines(self) -> list[tuple[str, str]]:
        """The continuations being sampled, or the current node's siblings (the current one marked)."""
        if self.streams:
            wide = max(20, self.width - 6)
            return [("", f"{i + 1}. {preview(text, wide)}\n") for i, text in enumerate(self.streams)]
        node = self.node
        siblings = self.tree.children(node.parent, include_hidden=self.show_hidden) if node.parent else [node]
        if len(siblings) < 2:
            return []
        return [
            (
                "class:cursor" if s.id == node.id else "",
                f"{i + 1}. {preview(s.text, max(20, self.width - 6))}\n",
            )
            for i, s in enumerate(siblings)
        ]
