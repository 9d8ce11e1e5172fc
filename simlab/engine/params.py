"""Sampling parameters: one table of knobs, the validated SamplingParams built from it, and the seed
policy. Imports no torch (the CLI validates flags before a model loads).

Adding a knob is one edit to KNOBS: the CLI flags, persona and spec keys, `/set`, compare's sampling
and the views are all derived from it (the logits step that applies it lives in engine.logits).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from simlab.errors import SamplingError

SAMPLERS = ("cdf", "multinomial")


@dataclass(frozen=True)
class Knob:
    """One sampling knob: its SamplingParams field, the key users write (personas, specs, /set), its
    CLI flag, type, default, the value that switches it off (None: always on), and its rule."""

    field: str
    key: str
    type: type
    default: Any
    off: Any
    rule: str  # what a valid value is, for messages
    help: str
    short: str = ""  # a one-letter CLI flag, if any

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    def valid(self, value: Any) -> bool:
        if self.type is int:
            return isinstance(value, int) and not isinstance(value, bool) and _RULES[self.field](value)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and _RULES[self.field](value)


_RULES = {
    "temperature": lambda v: math.isfinite(v) and v >= 0,
    "top_k": lambda v: v >= 0,
    "top_p": lambda v: 0 < v <= 1,
    "min_p": lambda v: 0 <= v < 1,
    "typical_p": lambda v: 0 < v <= 1,
    "repetition_penalty": lambda v: math.isfinite(v) and v > 0,
    "max_new_tokens": lambda v: v >= 1,
}

KNOBS: tuple[Knob, ...] = (
    Knob("temperature", "temperature", float, 0.8, None, "a number >= 0 (0 = greedy)", "0 = greedy", "-t"),
    Knob("top_k", "top_k", int, 0, 0, "an integer >= 0 (0 = off)", "keep the K best tokens; 0 = off"),
    Knob("top_p", "top_p", float, 0.95, 1.0, "a number in (0, 1] (1 = off)", "nucleus mass; 1 = off"),
    Knob(
        "min_p",
        "min_p",
        float,
        0.0,
        0.0,
        "a number in [0, 1) (0 = off)",
        "drop tokens below min_p x the best; 0 = off",
    ),
    Knob(
        "typical_p",
        "typical_p",
        float,
        1.0,
        1.0,
        "a number in (0, 1] (1 = off)",
        "locally typical mass; 1 = off",
    ),
    Knob("repetition_penalty", "repetition_penalty", float, 1.0, 1.0, "a number > 0 (1 = off)", "1 = off"),
    Knob("max_new_tokens", "max_tokens", int, 128, None, "an integer >= 1", "new tokens per reply"),
)
BY_KEY = {k.key: k for k in KNOBS}
BY_FIELD = {k.field: k for k in KNOBS}


def _default(name: str) -> Any:
    return field(default=BY_FIELD[name].default)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. temperature 0 means greedy; a knob at its off value is skipped."""

    temperature: float = _default("temperature")
    top_k: int = _default("top_k")
    top_p: float = _default("top_p")
    min_p: float = _default("min_p")
    typical_p: float = _default("typical_p")
    repetition_penalty: float = _default("repetition_penalty")
    max_new_tokens: int = _default("max_new_tokens")
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # How a token is drawn from the filtered distribution: "cdf" (one uniform per token, over the
    # tokens the filters kept) or "multinomial" (torch.multinomial over the whole vocabulary, what
    # nodes sampled before simlab 0.2 used; replay picks it for them so they still reproduce).
    sampler: str = "cdf"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        for knob in KNOBS:
            value = getattr(self, knob.field)
            if not knob.valid(value):
                raise SamplingError(f"{knob.key}={value!r} is invalid: use {knob.rule}")
        if not (self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed < 2**63)):
            raise SamplingError(f"seed={self.seed!r} is invalid: use an integer in [0, 2**63)")
        if self.sampler not in SAMPLERS:
            raise SamplingError(f"sampler={self.sampler!r} is invalid: use {' or '.join(SAMPLERS)}")
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            raise SamplingError(f"stop={list(self.stop)!r} is invalid: stop strings must be non-empty text")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def with_overrides(self, **changes: object) -> SamplingParams:
        """A copy with some fields changed (validated again)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise SamplingError(
                f"unknown sampling parameter {unknown[0]!r}; known: {', '.join(sorted(known))}"
            )
        return replace(self, **changes)

    def as_record(self) -> dict[str, Any]:
        """The fields a sampled node records (all but the seed, which it keeps on its own)."""
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in fields(self)
            if f.name != "seed"
        }

    def describe(self) -> str:
        """One line of every knob by the name users write, e.g. for /info and reports."""
        return " ".join(f"{k.key} {getattr(self, k.field)}" for k in KNOBS)


def from_keys(values: dict[str, Any], where: str) -> dict[str, Any]:
    """User keys (max_tokens, ...) with checked values -> SamplingParams fields; raises SamplingError."""
    out = {}
    for key, value in values.items():
        knob = BY_KEY.get(key)
        if knob is None:
            raise SamplingError(f"{where}{key}: unknown sampling key; known: {', '.join(BY_KEY)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SamplingError(f"{where}{key}: must be a number")
        if not knob.valid(value):
            raise SamplingError(f"{where}{key}: {key}={value!r} is invalid: use {knob.rule}")
        out[knob.field] = value
    return out


def parse_setting(key: str, text: str, others: Sequence[str] = ()) -> tuple[str, Any]:
    """A typed `/set KEY VALUE` -> (SamplingParams field, value); raises SamplingError (`others`: the
    caller's own settings, named with these where the key is none of them)."""
    knob = BY_KEY.get(key.replace("-", "_")) or BY_FIELD.get(key.replace("-", "_"))
    if knob is None:
        known = ", ".join([*BY_KEY, "stop", *others])
        raise SamplingError(f"/set {key}: unknown setting; use one of {known}")
    try:
        value = knob.type(text)
    except ValueError:
        raise SamplingError(
            f"/set {knob.key} {text}: not {'a whole number' if knob.type is int else 'a number'}"
        ) from None
    return knob.field, value


def decode_escapes(text: str) -> str:
    """A stop string as typed: \\n, \\t and \\\\ are what they say; every other character stays as it is."""
    out, i = [], 0
    while i < len(text):
        pair = text[i : i + 2]
        if pair in ("\\n", "\\t", "\\\\"):
            out.append({"\\n": "\n", "\\t": "\t", "\\\\": "\\"}[pair])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


# -- the seed policy --------------------------------------------------------------------------


def branch_seeds(seed: int, n: int) -> list[int]:
    """Branch i of a run seeded `seed` draws with seed + i, alone or among siblings."""
    return [seed + i for i in range(n)]


def fresh_seed() -> int:
    return random.randrange(2**31)


class SeedCounter:
    """The next reply's seed: +1 for each reply (a run of n branches takes n); None: fresh each time."""

    def __init__(self, first: int | None):
        self.next = first

    def take(self, n: int) -> int:
        seed = self.next if self.next is not None else fresh_seed()
        if self.next is not None:
            self.next += n
        return seed

    def give_back(self, n: int) -> None:
        """The last `take(n)`'s seeds unused (a run stopped before it saved anything): next again."""
        if self.next is not None:
            self.next -= n
