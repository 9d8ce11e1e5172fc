"""A text's tokens scored teacher-forced by any engine, and the drift between two engines' numbers.

An engine scores `continuation` after `prompt`: a local one with its own forward pass; a server
with prompt log-probabilities, where its probe found them (echo with logprobs, or vLLM's
prompt_logprobs). Tokens are compared by where they sit in the continuation (character spans), so
two engines that split the text alike are compared token for token, and a token only one of them
has is counted as not aligned rather than matched to a neighbour. No torch here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from simlab.engine.client import choices_of, served_tokens
from simlab.engine.probe import echo_scores
from simlab.errors import RemoteError, SimlabError

_CONTEXT_TOKENS = 4  # tokens decoded before a piece's own (a leading space depends on them)


@dataclass(frozen=True)
class Span:
    start: int  # characters into the continuation (negative: the token began in the prompt)
    end: int
    text: str
    logprob: float


@dataclass(frozen=True)
class Drift:
    """Two engines' log-probabilities of the same tokens."""

    tokens: int  # the stored reply's tokens
    aligned: int  # tokens both engines split alike (same span): compared
    max_abs: float
    mean_abs: float
    worst: str  # the token where they differ most ("" when none aligned)

    def line(self) -> str:
        if not self.aligned:
            return f"no token of {self.tokens} split alike: not compared"
        at = f" (at {self.worst!r})" if self.max_abs > 0 else ""
        return (
            f"{self.aligned}/{self.tokens} tokens compared, log-probability drift max {self.max_abs:.4f}"
            f"{at}, mean {self.mean_abs:.4f} (nats a token)"
        )

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def spans_of(pieces: Sequence[str], logprobs: Sequence[float], start: int = 0) -> list[Span]:
    """Consecutive token texts from `start` on, each with its log-probability."""
    out, at = [], start
    for text, lp in zip(pieces, logprobs):
        out.append(Span(at, at + len(text), text, float(lp)))
        at += len(text)
    return out


def backward(pieces: Sequence[str], logprobs: Sequence[float], end: int) -> list[Span]:
    """Token texts that end at `end` (the text's length), laid out from the end back: a first token
    whose text is not known (vLLM's None) does not move the others."""
    total = sum(len(p) for p in pieces)
    return spans_of(pieces, logprobs, end - total)


def score_text(
    engine, prompt: str, continuation: str, how: str = "", pieces: Sequence[str] | None = None
) -> list[Span]:
    """The continuation's tokens after the prompt, teacher-forced on `engine`: local (its forward
    pass), or a server by `how` (its probe's ServerMap.scoring: "echo", "prompt_logprobs", or
    "forced": a request a token, which needs the continuation's `pieces`)."""
    if engine.capabilities.local:
        return _local(engine, prompt, continuation)
    if how == "forced" and pieces is not None:
        return _forced(engine, prompt, list(pieces))
    shift = len(prompt)  # (the server scores the whole text; the continuation's tokens are kept)
    return [
        Span(s.start - shift, s.end - shift, s.text, s.logprob)
        for s in served_tokens_of(engine, prompt + continuation, how)
        if s.end > shift
    ]


def score_ids(engine, prompt: str, ids: Sequence[int]) -> tuple[list[Span], list[str]]:
    """A local engine's own tokens after the prompt, scored as they are (no text in between: a
    token cut inside a character stays that token), and their texts."""
    before = engine.encode(prompt)
    infos = engine.score_tokens(before + list(ids), len(before))
    texts = pieces_of(engine.tokenizer, before + list(ids), len(before))
    return spans_of(texts, [t.logprob for t in infos]), texts


def _local(engine, prompt: str, continuation: str) -> list[Span]:
    before, ids = engine.encode(prompt), engine.encode(prompt + continuation)
    common = next((k for k, (a, b) in enumerate(zip(before, ids)) if a != b), min(len(before), len(ids)))
    infos = engine.score_tokens(ids, common)
    texts = pieces_of(engine.tokenizer, ids, common)
    return [s for s in backward(texts, [t.logprob for t in infos], len(continuation)) if s.end > 0]


def pieces_of(tokenizer, ids: list[int], start: int) -> list[str]:
    """Each token's own text from `start` on, decoded in context (a character cut across tokens
    lands on the token that completes it). A few tokens before `start` are context enough (as
    engine.textstream decodes): a long prompt is not decoded again for every token."""
    base = max(0, start - _CONTEXT_TOKENS)
    out, before = [], tokenizer.decode(ids[base:start], skip_special_tokens=True)
    for k in range(start, len(ids)):
        now = tokenizer.decode(ids[base : k + 1], skip_special_tokens=True)
        if now.endswith("\ufffd") and k + 1 < len(ids):
            out.append("")
            continue
        out.append(now[len(before) :] if now.startswith(before) else now[-1:])
        before = now
    return out


def _asked(engine, prompt: str, **extra) -> dict:
    body = {
        "model": engine.info.name,
        "prompt": prompt,
        "max_tokens": 1,
        "temperature": 0.0,
        "stream": False,
        **extra,
    }
    data = engine.client.post_json("/completions", body)
    choices_of(data, engine.client.where)
    return data["choices"][0]


def _forced(engine, prompt: str, pieces: list[str]) -> list[Span]:
    """For a server with log-probabilities but no prompt log-probabilities (llama.cpp's
    `llama-server`): the prompt and the tokens so far, one token asked for with its best 20
    alternatives; a stored token found among them has its log-probability there, one not found is
    left out (not compared)."""
    out, at, joined = [], 0, "".join(pieces)
    for piece in pieces:
        tokens = served_tokens(_asked(engine, prompt + joined[:at], logprobs=20).get("logprobs"))
        found = next((lp for _, text, lp in tokens[0].top if text == piece), None) if tokens else None
        if found is not None:
            out.append(Span(at, at + len(piece), piece, found))
        at += len(piece)
    return out


def _vllm(engine, text: str) -> list[Span]:
    listed = _asked(engine, text, prompt_logprobs=0).get("prompt_logprobs")
    if not isinstance(listed, list):
        raise RemoteError(f"the server at {engine.client.where} sent no prompt_logprobs")
    pieces, values = [], []
    for entry in listed[1:]:  # the first token has none
        if not isinstance(entry, dict) or not entry:
            raise RemoteError(f"the server at {engine.client.where} sent prompt_logprobs in an unknown shape")
        best = next(iter(entry.values()))  # vLLM puts the prompt's own token first
        pieces.append(str(best.get("decoded_token") or ""))
        values.append(float(best["logprob"]))
    return backward(pieces, values, len(text))


def served_tokens_of(engine, text: str, how: str) -> list[Span]:
    """Every token of a text with its log-probability given those before it, on a server (the
    first token has none and is left out): spans in the text."""
    if how == "echo":
        scored = echo_scores(_asked(engine, text, echo=True, logprobs=1), text)
        if not scored:
            raise RemoteError(
                f"the server at {engine.client.where} did not echo the text with log-probabilities"
            )
        return [Span(o, o + len(t), t, lp) for o, t, lp in scored if lp is not None and o < len(text)]
    if how == "prompt_logprobs":
        return _vllm(engine, text)
    raise SimlabError(
        f"the server at {engine.config.base_url} gives no prompt log-probabilities (neither echo with "
        "logprobs nor prompt_logprobs): stored tokens cannot be scored there"
    )


def drift(stored: Sequence[Span], scored: Sequence[Span]) -> Drift:
    """Compare two engines' log-probabilities over the tokens both split alike."""
    theirs = {(s.start, s.end): s for s in scored}
    pairs = [(s, theirs[(s.start, s.end)]) for s in stored if (s.start, s.end) in theirs]
    if not pairs:
        return Drift(len(stored), 0, 0.0, 0.0, "")
    gaps = [abs(a.logprob - b.logprob) for a, b in pairs]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    return Drift(len(stored), len(pairs), max(gaps), sum(gaps) / len(gaps), pairs[worst][0].text)
