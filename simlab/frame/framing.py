"""Framing: what it takes to render a path and end a reply. A persona makes one; a session keeps it
on its frame node, so the session renders the same way after its persona file changes."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

# document: no speakers; the path is one text and every reply a raw continuation of it (Loom)
MODES = ("simulator", "chat", "document")
DEFAULT_TURN = "{speaker}: {text}\n"


@dataclass(frozen=True)
class Framing:
    user: str = "User"
    model: str = "Assistant"
    turn_template: str | dict[str, str] = DEFAULT_TURN  # or one per role: {user: ..., model: ...}
    mode: str = "simulator"
    stop: tuple[str, ...] | None = None  # None: either speaker's label on a new line
    # text the model reads after the conversation (depth 0: just before the reply; depth N: before
    # the last N turns), {{char}}/{{user}} filled: a card's post-history instructions, depth prompt
    inserts: tuple[tuple[str, int], ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Framing:
        """The framing a frame node recorded (the plain default for frames without one)."""
        data = dict(data or {})
        if data.get("stop") is not None:
            data["stop"] = tuple(data["stop"])
        data["inserts"] = tuple((str(t), int(d)) for t, d in data.get("inserts") or ())
        if not data.get("turn_template"):
            data.pop("turn_template", None)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "model": self.model,
            "turn_template": self.turn_template,
            "mode": self.mode,
            "stop": list(self.stop) if self.stop is not None else None,
        } | ({"inserts": [[t, d] for t, d in self.inserts]} if self.inserts else {})

    def template(self, role: str) -> str:
        """The turn template of a role ("user" or "model"): one for both, or one each."""
        t = self.turn_template
        return t.get(role, DEFAULT_TURN) if isinstance(t, dict) else t

    def turn(self, role: str, speaker: str, text: str) -> str:
        """A turn as the transcript writes it."""
        return self.template(role).replace("{speaker}", speaker).replace("{text}", text)

    def head(self, role: str, speaker: str) -> str:
        """What a turn writes before its text ("Guest: ")."""
        return self.template(role).split("{text}")[0].replace("{speaker}", speaker)

    def label(self, role: str, speaker: str) -> str:
        """What the prompt ends with before a reply: the turn's head, without its trailing spaces
        (BPE vocabularies attach a space to the following word, so the model should write it)."""
        return self.head(role, speaker).rstrip(" ")

    def lead(self) -> str:
        """The spaces label() removed, which a reply starts with and its stored text does not."""
        if self.mode == "document":
            return ""
        head = self.template("model").split("{text}")[0]
        return head[len(head.rstrip(" ")) :]

    def insert_text(self, text: str) -> str:
        """An insert as the model reads it: {{char}} and {{user}} are the speaker labels, on a line
        of its own."""
        text = text.replace("{{char}}", self.model).replace("{{user}}", self.user)
        return text.rstrip("\n") + "\n"

    def default_stops(self) -> tuple[str, ...]:
        """Either speaker's label on a new line: the next user turn, or the model running on
        into a second turn of its own (a bare new line when user turns have no label); a document
        has none (its continuations end at max tokens, as Loom's do)."""
        if self.mode == "document":
            return ()
        labels = [self.label("user", self.user).strip(), self.label("model", self.model).strip()]
        return tuple(dict.fromkeys("\n" + label for label in labels if label)) or ("\n",)

    def stops(self) -> tuple[str, ...]:
        return self.stop if self.stop is not None else self.default_stops()
