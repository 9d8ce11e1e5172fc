"""Sampling parameters: how to pick each next token, validated up front. Imports no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from simlab.errors import SamplingError

SAMPLERS = ("cdf", "multinomial")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. temperature 0 means greedy; 0/1.0 values switch a filter off."""

    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # How a token is drawn from the filtered distribution: "cdf" (one uniform per token, over the
    # tokens the filters kept) or "multinomial" (torch.multinomial over the whole vocabulary, what
    # nodes sampled before simlab 0.2 used; replay picks it for them so they still reproduce).
    sampler: str = "cdf"

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        checks = [
            ("temperature", math.isfinite(self.temperature) and self.temperature >= 0,
             "a number >= 0 (0 = greedy)"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "an integer >= 0 (0 = off)"),
            ("top_p", 0 < self.top_p <= 1, "a number in (0, 1] (1 = off)"),
            ("min_p", 0 <= self.min_p < 1, "a number in [0, 1) (0 = off)"),
            ("typical_p", 0 < self.typical_p <= 1, "a number in (0, 1] (1 = off)"),
            ("repetition_penalty", math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0,
             "a number > 0 (1 = off)"),
            ("max_new_tokens", isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
             "an integer >= 1"),
            ("seed", self.seed is None or (isinstance(self.seed, int) and 0 <= self.seed < 2**63),
             "an integer in [0, 2**63)"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise SamplingError(f"{name}={getattr(self, name)!r} is invalid: use {expected}")
        if self.sampler not in SAMPLERS:
            raise SamplingError(f"sampler={self.sampler!r} is invalid: use {' or '.join(SAMPLERS)}")
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            raise SamplingError(f"stop={list(self.stop)!r} is invalid: stop strings must be non-empty text")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def with_overrides(self, **changes: object) -> "SamplingParams":
        """A copy with some fields changed (validated again)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise SamplingError(f"unknown sampling parameter {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return replace(self, **changes)
