"""The Loom editor's multiverse pane (key M): the multiverse of what `g` would sample at the cursor,
as numbered blocks with bars, drawn over the panes; ↑↓ choose a block, → zooms into it (its
continuations renormalised to 100%), ← zooms out, Enter keeps it as a reply (chosen, not sampled),
g grows it again, Esc or M closes. What the blocks cover (of the zoomed block) stays in sight under
them, however far the list scrolls."""

from __future__ import annotations

import textwrap

from prompt_toolkit.data_structures import Point
from prompt_toolkit.filters import Condition
from prompt_toolkit.layout import ConditionalContainer, Dimension, Float, FormattedTextControl, HSplit, Window
from prompt_toolkit.widgets import Frame

from simlab.errors import SimlabError
from simlab.repl.loom import Loom
from simlab.repl.multiverse import grow, keep_block, last
from simlab.session import multiverse as sm

KEYS = "↑↓ choose · → zoom in · ← out · Enter keeps · g grows again · Esc closes"


def open_pane(loom: Loom) -> None:
    """M: the last multiverse at the cursor's place, or a new one grown in the worker."""
    try:
        last(loom.chat)
    except SimlabError:
        return grow_again(loom)
    loom.universe_open = True
    loom.say(KEYS)


def grow_again(loom: Loom) -> None:
    """g: grown again, with the depth, cutoff and distribution of the one shown (8 tokens, 1% at first)."""
    shown = loom.chat.multiverse.saved if loom.chat.multiverse is not None else None
    rest = f"{shown['depth']} {shown['cutoff']:g}" + (" raw" if shown.get("raw") else "") if shown else ""

    def job() -> str:
        universe = grow(loom.chat, rest)
        loom.universe_open = True
        return f"{universe.saved['passes']} forward passes in {universe.saved['seconds']:.2f} s · {KEYS}"

    loom.universe_open = False
    loom._start("growing the multiverse", job)


def fragments(loom: Loom) -> list:
    """The numbered blocks, the selected one marked (what they cover is the pane's own last line)."""
    universe = loom.chat.multiverse
    if universe is None:
        return []
    width = max(10, min(24, loom.width // 4))
    lines = universe.lines(width)[:-1]
    out = []
    for k, line in enumerate(lines):
        out += [("class:token-cursor" if k == universe.selected else "", line), ("", "\n")]
    return out[:-1]


def covered(loom: Loom) -> str:
    """What the blocks cover, depth by depth, between words at the pane's width (the settings are
    in its title)."""
    universe = loom.chat.multiverse
    if universe is None:
        return ""
    mass = sm.covered_line(universe.saved, universe.zoom).split("; ")[0]
    return textwrap.fill(mass, max(20, loom.width - 8))


def pane(loom: Loom) -> Float:
    universe = lambda: loom.chat.multiverse  # noqa: E731
    blocks = Window(  # (the selected row kept in sight: the list scrolls to it)
        FormattedTextControl(
            lambda: fragments(loom),
            show_cursor=False,
            get_cursor_position=lambda: Point(0, universe().selected if universe() else 0),
        ),
        wrap_lines=False,
    )
    mass = Window(FormattedTextControl(lambda: covered(loom)), height=Dimension(max=3), wrap_lines=True)
    body = Frame(
        HSplit([blocks, Window(height=1, char="─", style="class:fold"), mass]),
        title=lambda: universe().title() if universe() else "multiverse",
    )
    shown = Condition(lambda: loom.universe_open and universe() is not None)
    return Float(ConditionalContainer(body, shown), top=1, bottom=3, left=2, right=2)


def bind(kb, loom: Loom, safe) -> None:
    """The pane's keys, while it is open (safe: a handler whose refusal is said in one line)."""
    shown = Condition(lambda: loom.universe_open)

    def key(*keys):
        def done(handler):
            def then(event):  # (what an earlier key said is said of another view)
                loom.message = KEYS
                handler(event)

            return kb.add(*keys, filter=shown)(safe(loom, then))

        return done

    def close(event) -> None:
        loom.universe_open = False
        loom.say("")

    def universe():
        return loom.chat.multiverse

    def kept(event) -> None:
        loom.universe_open = False
        loom._start("keeping the block", lambda: keep_block(loom.chat, universe()))

    for keys, by in ((("up",), -1), (("k",), -1), (("down",), 1), (("j",), 1)):
        key(*keys)(lambda e, b=by: universe().move(b))
    for keys in (("right",), ("l",)):
        key(*keys)(lambda e: universe().zoom_in())
    for keys in (("left",), ("h",)):
        key(*keys)(lambda e: universe().zoom_out())
    key("enter")(kept)
    key("g")(lambda e: grow_again(loom))
    for keys in (("escape",), ("M",), ("q",)):
        key(*keys)(close)
