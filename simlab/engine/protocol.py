"""The Engine Protocol: what the REPL, replay, compare and turns may ask of an engine, local or remote,
and the capabilities that say which of it this one can do. No torch here.

Code above the engine asks `engine.capabilities`, never the engine's internals; forward passes happen
only inside simlab.engine and simlab.trace.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from simlab.engine.params import SamplingParams
from simlab.engine.results import Completion, Delta, RunStats, TokenInfo


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do beyond sampling."""

    local: bool  # the weights are here: forward passes of our own
    can_score: bool  # teacher-forced log-probabilities and next-token distributions
    can_trace: bool  # the residual stream, through a trace recorder
    token_ids: bool  # replies come with token ids (a server gives token text at most)
    concurrency: int = 1  # sibling requests in flight at once (1: the engine batches siblings itself)


LOCAL = Capabilities(local=True, can_score=True, can_trace=True, token_ids=True)


class Info(Protocol):
    """What an engine says about its model (models.load.ModelInfo, engine.remote.RemoteInfo)."""

    spec: str
    name: str
    revision: str
    context_length: int
    device: str
    dtype: str
    weights: str  # float, int8, int4 (models.quant); a server's are its own
    architecture: str

    def as_dict(self) -> dict[str, Any]: ...


class Run(Protocol):
    """One prefill (or request) and the decode of its branches; iterate for Deltas."""

    params: SamplingParams
    completions: list[Completion]
    stats: RunStats
    prompt_ids: list[int]

    @property
    def interrupted(self) -> bool: ...

    def interrupt(self) -> None: ...

    def __iter__(self) -> Iterator[Delta]: ...


class Engine(Protocol):
    info: Info
    tokenizer: Any  # None when the engine cannot count tokens
    capabilities: Capabilities

    def encode(self, text: str) -> list[int]: ...

    def start(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams,
        n: int = 1,
        recorder: Any = None,
        passes: Sequence[int] | None = None,  # a local engine: how to feed the prompt (engine.prefix)
    ) -> Run: ...

    def generate(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams,
        n: int = 1,
        recorder: Any = None,
        passes: Sequence[int] | None = None,
    ) -> list[Completion]: ...

    def score(self, ids: Sequence[int]) -> list[float]: ...

    def score_tokens(self, ids: Sequence[int], start: int) -> list[TokenInfo]:
        """Teacher-forced tokens from `start` on: log-probabilities and alternatives (local only)."""
        ...

    def decode_together(self, runs: Sequence[Run]) -> None:
        """Decode started runs to their ends: as one batch where the engine can (a local model's
        one-branch runs), else one after another."""
        ...

    def provenance(self, completion: Completion) -> dict[str, Any] | None:
        """What a saved reply records about where it came from (a server's URL; None when local)."""
        ...


def drain(run: Run) -> list[Completion]:
    """Decode a run to its end without looking at the text as it comes."""
    for _ in run:
        pass
    return run.completions
