"""What a run produces, local or remote: tokens, completions, text deltas, timings. No torch here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TokenInfo:
    """One generated token: its id and text, and log-probabilities under the model (before filters)."""

    id: int
    text: str
    logprob: float
    top: tuple[tuple[int, str, float], ...]  # (id, text, logprob) of the best alternatives


@dataclass
class Completion:
    """One branch's result. `text` excludes a matched stop string; `tokens` include its tokens."""

    index: int
    seed: int | None
    text: str = ""
    tokens: list[TokenInfo] = field(default_factory=list)
    finish_reason: str | None = None  # "stop", "eos", "length" or "interrupted"
    stop_string: str | None = None
    truncated_to_context: bool = False
    server: dict[str, Any] | None = None  # a remote backend: what the server reported (simlab.remote)

    @property
    def token_ids(self) -> list[int]:
        return [t.id for t in self.tokens]


@dataclass(frozen=True)
class Delta:
    """New text for one branch, with the token that produced it (None for a final flush)."""

    branch: int
    text: str
    token: TokenInfo | None


@dataclass
class RunStats:
    prompt_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose KV came from the previous run
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    first_token_seconds: float = 0.0  # from start to the first sampled token
    decode_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0
