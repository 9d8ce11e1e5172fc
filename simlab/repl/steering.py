"""`/steer`: the steering vectors the chat's replies are sampled with (each reply records them;
`/steer keeper 0,1,2` then `/n 3` samples one sibling a strength, as one batch), and the strength
knob: `/steer +` and `/steer -` (Alt+] and Alt+[ at the prompt, ] and [ in the Loom editor) move the
last vector's strength by a step."""

from __future__ import annotations

import math

from simlab.errors import SteerError
from simlab.steer.use import steering_of, steerings_of, sweep_of, uses_of

STEP = 0.25
USAGE = "usage: /steer NAME [STRENGTH[,...]] [@LAYERS] ..., /steer + or -, /steer off (simlab steer list)"


def steer(chat, rest: str) -> None:
    """/steer shows what is on; /steer off; /steer + or -; /steer NAME [STRENGTH] [@LAYERS] [NAME ...]
    (or NAME:STRENGTH@LAYERS) puts those vectors on, replacing the ones before."""
    words = rest.split()
    if not words:
        chat.view.note(
            describe(chat) + "; /steer off stops it" if chat.steer_uses else "no steering; " + USAGE
        )
        return
    if words == ["off"]:
        chat.steer_uses = []
        chat.view.note("steering off: replies from here are not steered")
        return
    if words in (["+"], ["-"]):
        chat.view.note(nudge(chat, STEP if words == ["+"] else -STEP))
        return
    try:
        uses = uses_of(_specs(words))
        steering_of(
            uses, chat.engine, chat.steer_positions
        )  # (checked against the model now, not at the reply)
    except SteerError as exc:  # (said as what was typed here: /steer, not the flag)
        raise SteerError(str(exc).replace("--steer ", "/steer ", 1)) from None
    chat.steer_uses = uses
    chat.view.note(describe(chat) + ": replies from here are steered (each records it)")


def steering_for(chat, n: int = 1):
    """What the chat's next n replies add (engine.steering.Steering, one a sibling for a sweep of
    strengths), or None; n = 0: only checked. A vector found not to fit the model once it is there
    (a --steer at start names a block it lacks) is taken off, and the error says so."""
    uses = chat.steer_uses
    if not uses:
        return None
    k = sweep_of(uses)
    if n and k not in (1, n):
        raise SteerError(f"/steer: {k} strengths are one a sibling; sample {k} siblings (/n {k})")
    try:
        return steerings_of(uses, chat.engine, n or k, chat.steer_positions)
    except SteerError as exc:
        chat.steer_uses = []
        raise SteerError(f"{exc}; steering is off now (/steer NAME STRENGTH puts a vector on)") from None


def remembered(chat) -> dict:
    """What --resume puts on again beside the sampling: the vectors as /steer and --steer write them,
    and where; and the autoloom's knobs (repl.autoloom), as /set left them."""
    grow = chat.session.tree.settings.get("grow")
    kept = {"grow": grow} if grow else {}
    if not chat.steer_uses:
        return kept
    return kept | {"steer": [use.label() for use in chat.steer_uses], "steer_positions": chat.steer_positions}


def _specs(words: list[str]) -> list[str]:
    """`keeper 2 @12 noir -1` -> ["keeper:2@12", "noir:-1"]; `keeper:2@12` stays as it is."""
    specs: list[str] = []
    for word in words:
        if word.startswith("@") and specs and "@" not in specs[-1]:
            specs[-1] += word
        elif _number(word) and specs and ":" not in specs[-1] and "@" not in specs[-1]:
            specs[-1] += f":{word}"
        elif _number(word) or word.startswith("@"):
            raise SteerError(f"/steer {' '.join(words)}: {word!r} has no vector before it; {USAGE}")
        else:
            specs.append(word)
    return specs


def _number(word: str) -> bool:
    """A strength, or several (one a sibling: `0,0.5,1,2`)."""
    try:
        return all(math.isfinite(float(part)) for part in word.split(","))
    except ValueError:
        return False


def nudge(chat, by: float) -> str:
    """The last vector's strength moved by `by`; what it is now."""
    if not chat.steer_uses:
        return "no steering to turn: /steer NAME STRENGTH puts a vector on"
    last = chat.steer_uses[-1]
    chat.steer_uses = [*chat.steer_uses[:-1], last.at(round(last.strength + by, 6))]
    return describe(chat)


def describe(chat) -> str:
    """`steer keeper:2@12` (and where, unless at every position)."""
    where = f" ({chat.steer_positions} positions only)" if chat.steer_positions != "all" else ""
    return "steer " + " + ".join(use.label() for use in chat.steer_uses) + where
