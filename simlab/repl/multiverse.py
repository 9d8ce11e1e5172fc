"""/multiverse and the Loom editor's multiverse pane: grow the multiverse of what would be sampled at
the cursor (turns.multiverse, saved beside its node), look at it zoomed into any block (its
probabilities renormalised to that block, the covered mass always shown) and keep a block as a reply.

`Universe` is the view both faces draw (no terminal library): the saved record, the zoomed block,
the selected row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from simlab.errors import SimlabError
from simlab.repl.state import Chat
from simlab.session import multiverse as sm
from simlab.turns.multiverse import grow_at, keep, kept_before, where

USAGE = "/multiverse [DEPTH [CUTOFF]] [raw] | zoom N | out | keep N | show"


@dataclass
class Universe:
    """A saved multiverse as a face shows it: zoomed into a block, one row selected."""

    saved: dict
    root: sm.Block = field(init=False)
    zoom: sm.Block = field(init=False)
    selected: int = 0
    back: list[tuple[sm.Block, int]] = field(default_factory=list)  # (zoom, selected) before each zoom in

    def __post_init__(self) -> None:
        self.root = self.zoom = sm.tree(self.saved)

    def rows(self) -> list[sm.Block]:
        return sm.rows(self.zoom)

    def lines(self, width: int = sm.BAR) -> list[str]:
        """Numbered block lines under the zoom, then what they cover (of the zoomed block)."""
        return sm.drawn(self.saved, self.zoom, width, numbered=True)

    def block(self, number: int | None = None) -> sm.Block:
        """Block `number` (1-based, as drawn) of the zoomed view, or the selected one."""
        rows = self.rows()
        k = self.selected if number is None else number - 1
        if not rows or not 0 <= k < len(rows):
            raise SimlabError(f"no block {number} here; the blocks are numbered 1 to {len(rows)}")
        return rows[k]

    def move(self, by: int) -> None:
        self.selected = max(0, min(self.selected + by, len(self.rows()) - 1))

    def zoom_in(self, number: int | None = None) -> None:
        """Into a block: its continuations at 100%."""
        block = self.block(number)
        if not block.children:
            raise SimlabError(
                "nothing above the cutoff grows under this block; grow deeper or lower the cutoff"
            )
        self.back.append((self.zoom, self.selected))
        self.zoom, self.selected = block, 0

    def zoom_out(self) -> None:
        """Back to the view zoomed in from (the block zoomed into selected)."""
        if self.back:
            self.zoom, self.selected = self.back.pop()
        elif self.zoom.parent is not None:
            was, self.zoom = self.zoom, self.zoom.parent
            self.selected = self.rows().index(was)
        else:
            raise SimlabError("at the whole multiverse already")

    def title(self) -> str:
        where = f" · in {json.dumps(self.zoom.text_from_root(), ensure_ascii=False)}" if self.zoom.ids else ""
        raw = " · raw" if self.saved.get("raw") else ""
        return f"multiverse · depth {self.saved['depth']}, cutoff {self.saved['cutoff']:g}{raw}{where}"


def grow(chat: Chat, rest: str) -> Universe:
    """Grow the multiverse at the cursor with the chat's sampling (`raw`: the model's own), save it."""
    words = rest.split()
    raw = "raw" in words
    numbers = [w for w in words if w != "raw"]
    try:
        depth = int(numbers[0]) if numbers else 8
        cutoff = float(numbers[1]) if len(numbers) > 1 else 0.01
    except ValueError:
        raise SimlabError(f"usage: {USAGE}") from None
    if len(numbers) > 2 or not 1 <= depth <= 64 or not 0 < cutoff <= 1:
        raise SimlabError(f"/multiverse: depth 1 to 64 and a cutoff above 0, at most 1 (usage: {USAGE})")
    engine = chat.engine
    if not engine.capabilities.local:
        raise SimlabError(
            "/multiverse reads every next-token distribution from the weights: a local model only"
        )
    if chat.steering():
        chat.view.note("(the multiverse reads the model unsteered: /steer does not reach it yet)")
    chat.view.waiting(f"growing the multiverse, depth {depth}, cutoff {cutoff:g}")
    saved = grow_at(engine, chat.session, chat.cursor.id, chat.params, depth, cutoff, raw=raw)
    chat.multiverse = Universe(saved)
    return chat.multiverse


def last(chat: Chat) -> Universe:
    """The multiverse shown last, or the one saved last at the cursor's place."""
    universe = chat.multiverse
    at = where(chat.session, chat.cursor.id).parent
    if universe is not None and universe.saved["node"] == at:
        return universe
    saved = chat.tree.multiverses.get(at)
    if not saved:
        raise SimlabError("no multiverse here yet: /multiverse grows one")
    chat.multiverse = Universe(saved[-1])
    return chat.multiverse


def keep_block(chat: Chat, universe: Universe, number: int | None = None) -> str:
    """A block kept as a reply (chosen, not sampled); the cursor goes to it. What to say."""
    block = universe.block(number)
    node = kept_before(chat.session, universe.saved, block.ids)
    if node is None:
        node = keep(chat.engine, chat.session, universe.saved, block.ids)
        said = f"kept as {chat.tree.short(node.id)} (chosen, not sampled; p {100 * block.p:.1f}%)"
    else:
        said = f"kept already as {chat.tree.short(node.id)}"
    chat.session.goto(node.id)
    return said


def multiverse(chat: Chat, rest: str) -> None:
    """/multiverse: grow and show; zoom N, out, keep N, show."""
    words = rest.split()
    verb = words[0].lower() if words else ""
    if verb in ("zoom", "keep") and (len(words) != 2 or not words[1].isdigit()):
        raise SimlabError(f"usage: /multiverse {verb} N (a block's number as drawn)")
    if verb == "zoom":
        universe = last(chat)
        universe.zoom_in(int(words[1]))
    elif verb == "out":
        universe = last(chat)
        universe.zoom_out()
    elif verb == "keep":
        universe = last(chat)
        chat.view.note(keep_block(chat, universe, int(words[1])))
        chat.view.turn(chat.cursor)
        return
    elif verb == "show":
        universe = last(chat)
    else:
        universe = grow(chat, rest)
    chat.view.say(universe.title())
    for line in universe.lines():
        chat.view.say(line)
    if verb not in ("zoom", "out", "show"):
        chat.view.say(f"{universe.saved['passes']} forward passes in {universe.saved['seconds']:.2f} s")
    chat.view.note("(/multiverse zoom N looks inside block N, out comes back, keep N keeps it as a reply)")
