"""How much of a path the model reads: when the transcript and the reply outgrow the context, the
frame stays and the oldest turns slide out at turn boundaries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from simlab.errors import ContextLengthError, SimlabError
from simlab.frame.render import reply_prompt


@dataclass(frozen=True)
class Fitted:
    """A reply's prompt as token ids, and the part of the path it reads."""

    prompt: list[int] | str  # token ids; text for a server (it tokenizes the text itself)
    path: list[Any]  # the frame, then the turns that fit (session.tree.Node)
    window: dict[str, Any] | None = None  # set when older turns were left out (recorded on the reply)
    tokens: int | None = None  # the prompt's length in tokens; None: nothing here counts them


def windowed(path: Sequence[Any], first: str) -> list[Any]:
    """The path as the model reads it from turn `first` on: the frame, then that turn and later ones."""
    at = next((i for i, node in enumerate(path) if node.id == first), None)
    if at is None:
        raise SimlabError(f"the context window starts at node {str(first)[:8]}, which is not on this path")
    head = path[:1] if path and path[0].role == "frame" else []
    return head + path[max(at, len(head)) :]


def fit_prompt(path: list[Any], speaker: str | None, engine: Any, max_new_tokens: int) -> Fitted:
    """The prompt for the next reply, sliding the window at turn boundaries when it outgrows the context.

    The frame always stays. While the whole transcript and max_new_tokens fit, nothing is left out.
    Once they do not, the oldest turns go, a quarter of the context more than needed, so that the
    window moves seldom and the turns after its start keep their cached keys and values; a window
    recorded earlier on the path is kept while it fits. If even the frame and the last turn leave
    less than max_new_tokens, the engine clips the reply to the room there is.
    """
    if engine.tokenizer is None:  # a server without a tokenizer here: it says when they do not fit
        return Fitted(reply_prompt(path, speaker, None), path)
    head = path[:1] if path and path[0].role == "frame" else []
    turns = path[len(head) :]
    limit = engine.info.context_length
    as_text = not engine.capabilities.token_ids  # a server reads text, counted by its tokenizer

    def ids_for(k: int) -> list[int]:
        prompt = reply_prompt(head + turns[k:], speaker, engine.tokenizer)
        return engine.encode(prompt) if isinstance(prompt, str) else prompt

    def fitted(k: int, ids: list[int]) -> Fitted:
        window = {"from": turns[k].id, "dropped": k, "prompt_tokens": len(ids)} if k else None
        prompt = reply_prompt(head + turns[k:], speaker, None) if as_text else ids
        return Fitted(prompt, head + turns[k:], window, len(ids))

    earlier = next((n.window["from"] for n in reversed(path) if n.window and "from" in n.window), None)
    start = next((i for i, n in enumerate(turns) if n.id == earlier), 0)
    ids = ids_for(start)
    if len(ids) + max_new_tokens <= limit or start >= len(turns) - 1:
        return fitted(start, ids)
    for budget in (limit - max_new_tokens - limit // 4, limit - max_new_tokens):
        lo, hi = start + 1, len(turns) - 1  # find the fewest turns to leave out
        best = None
        while lo <= hi:
            mid = (lo + hi) // 2
            mid_ids = ids_for(mid)
            if len(mid_ids) <= budget:
                best, hi = (mid, mid_ids), mid - 1
            else:
                lo = mid + 1
        if best is not None:
            return fitted(*best)
    last = len(turns) - 1
    ids = ids_for(last)
    if len(ids) >= limit:
        raise ContextLengthError(
            f"the frame and the last turn alone are {len(ids)} tokens but {engine.info.name} reads at most "
            f"{limit}; shorten the turn, or use a persona with a shorter frame or a model with a longer "
            "context"
        )
    return fitted(last, ids)
