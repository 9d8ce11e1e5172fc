"""The panes the Loom editor draws over its others (the multiverse, M; the blind comparison, B) and
the keys that grow and order the tree (G, o): bound here, so the app's bindings stay one table."""

from __future__ import annotations

from prompt_toolkit.layout import Float

from simlab.repl import loom_blind, loom_multiverse
from simlab.repl.loom import Loom


def open_over(loom: Loom) -> bool:
    """A pane is open: the editor's own keys wait."""
    return loom.universe_open or loom.blind is not None


def floats(loom: Loom) -> list[Float]:
    return [loom_multiverse.pane(loom), loom_blind.pane(loom)]


def bind(kb, loom: Loom, key, safe) -> None:
    """key: the app's binding for a browsing key; safe: a handler whose refusal is said in one line."""
    key("M")(lambda e: loom_multiverse.open_pane(loom))
    key("B")(lambda e: loom_blind.open_pane(loom))
    key("G")(lambda e: loom.command("/grow"))
    key("o")(lambda e: loom.cycle_order())
    loom_multiverse.bind(kb, loom, safe)
    loom_blind.bind(kb, loom, safe)
