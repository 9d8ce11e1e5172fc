"""The Loom editor's blind comparison (key B): the replies beside the cursor (and, in a compare
sweep's session, the same sample under the other variants' frames) over the whole screen, in a
random order, with nothing that tells what made them (no persona, model, temperature, steering or
seed; the tree and the status line are covered); 1-9 rank them best first, Backspace takes the last
back, Enter saves the ranking as tags on the nodes (session.blind), Esc leaves without saving. What
each was is said once it is saved."""

from __future__ import annotations

from prompt_toolkit.filters import Condition
from prompt_toolkit.layout import ConditionalContainer, Float, FormattedTextControl, Window
from prompt_toolkit.widgets import Frame

from simlab.errors import SimlabError
from simlab.repl.loom import Loom
from simlab.repl.screen import pictured
from simlab.session.blind import Blind, candidates, variant

TITLE = "blind: 1-9 rank best first · Backspace undoes · Enter saves · Esc leaves"
ORDINAL = {1: "1st", 2: "2nd", 3: "3rd"}


def open_pane(loom: Loom) -> None:
    shown = candidates(loom.tree, loom.node)
    if len(shown) < 2:
        raise SimlabError("a blind comparison needs two replies or more here (g samples more)")
    loom.chat.session.check_writable()
    loom.blind = Blind.of(shown)
    before = [t for t in shown[0].tags if t.startswith("blind:")]
    if all(any(t.startswith("blind:") for t in n.tags) for n in shown) and before:
        loom.say(f"(ranked before, {len(before)} time(s): Enter adds another comparison; Esc leaves)")


def fragments(loom: Loom) -> list:
    blind, out = loom.blind, []
    if blind is None:
        return out
    for k, node in enumerate(blind.shown):
        rank = blind.ranking.index(k) + 1 if k in blind.ranking else None
        mark = f"  ({ORDINAL.get(rank, f'{rank}th')})" if rank else ""
        out += [("class:path", f"{k + 1}.{mark}\n"), ("", pictured(node.text.strip()) + "\n\n")]
    return out


def pane(loom: Loom) -> Float:
    body = Frame(Window(FormattedTextControl(lambda: fragments(loom)), wrap_lines=True), title=TITLE)
    return Float(ConditionalContainer(body, Condition(lambda: loom.blind is not None)), 0, 0, 0, 0)


def save(loom: Loom) -> None:
    blind = loom.blind
    if not blind.ranking:
        raise SimlabError("rank one reply at least (1-9), or Esc to leave without saving")
    session = loom.chat.session
    for node_id, tag in blind.tags().items():
        session.set_tag(node_id, tag)
    best = blind.shown[blind.ranking[0]]
    loom.blind = None
    loom.say(
        f"saved (blind:{blind.id}); 1st was {variant(best)}, seed {best.seed}; simlab compare --blind reports"
    )


def bind(kb, loom: Loom, safe) -> None:
    shown = Condition(lambda: loom.blind is not None)

    def key(*keys):
        return lambda handler: kb.add(*keys, filter=shown)(safe(loom, handler))

    def ranked(number: int):
        def handler(event) -> None:
            try:
                loom.blind.rank(number)
            except ValueError as exc:
                raise SimlabError(str(exc)) from None

        return handler

    for digit in range(1, 10):
        key(str(digit))(ranked(digit))
    key("backspace")(lambda e: loom.blind.ranking and loom.blind.ranking.pop())
    key("enter")(lambda e: save(loom))
    key("escape")(lambda e: (setattr(loom, "blind", None), loom.say("left without saving")))
