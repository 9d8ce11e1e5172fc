"""Flag groups shared by several commands (no torch here: the parser is built for every command)."""

from __future__ import annotations

# SamplingParams fields that chat, replay and compare take as optional overrides
OVERRIDES = ("temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty", "max_new_tokens")


def add_sampling_overrides(group) -> None:
    """--temperature ... --max-tokens, each None unless given (so defaults come from elsewhere)."""
    group.add_argument("--temperature", "-t", type=float)
    group.add_argument("--top-k", type=int)
    group.add_argument("--top-p", type=float)
    group.add_argument("--min-p", type=float)
    group.add_argument("--typical-p", type=float)
    group.add_argument("--repetition-penalty", type=float)
    group.add_argument("--max-tokens", type=int, dest="max_new_tokens")


def overrides_of(args) -> dict:
    return {k: getattr(args, k) for k in OVERRIDES if getattr(args, k, None) is not None}
