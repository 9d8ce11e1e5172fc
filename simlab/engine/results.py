"""What a run produces, local or remote: tokens, completions, text deltas, timings. No torch here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from simlab.engine.params import branch_seeds, fresh_seed


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
    server: dict[str, Any] | None = None  # a remote backend: what the server reported (simlab.engine.remote)
    prefill: tuple[int, ...] = ()  # a local run: the passes its prompt went in (engine.prefix.pack)

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


class RunControl:
    """What a local and a remote run share: one completion per branch, branch i seeded seed+i (a
    fresh random seed when none is given), and stopping early."""

    def __init__(self, params, n: int):
        self.params = params
        self.base_seed = params.seed if params.seed is not None else fresh_seed()
        self.seeds = branch_seeds(self.base_seed, n)
        self.completions = [
            Completion(index=i, seed=None if params.greedy else seed) for i, seed in enumerate(self.seeds)
        ]
        self._stop_requested = False

    @property
    def interrupted(self) -> bool:
        return any(c.finish_reason == "interrupted" for c in self.completions)

    def interrupt(self) -> None:
        """Stop; unfinished branches keep their text with finish reason 'interrupted'."""
        self._stop_requested = True
        for completion in self.completions:
            if completion.finish_reason is None:
                completion.finish_reason = "interrupted"


def token_info(
    tokenizer, token_id: int, logprob: float, top_ids: list[int], top_logprobs: list[float]
) -> TokenInfo:
    """A sampled token with its log-probability and the best alternatives, their text decoded."""
    decode = tokenizer.decode
    top = tuple((i, decode([i]), lp) for i, lp in zip(top_ids, top_logprobs))
    return TokenInfo(token_id, decode([token_id]), logprob, top)
