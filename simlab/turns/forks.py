"""A reply whose first tokens are given rather than sampled: /fork at a token with an alternative
(or text of the user's), the forced tokens teacher-forced so they carry log-probabilities, then the
model writes on, sampled with the reply's seed and parameters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simlab.engine.params import SamplingParams
from simlab.engine.protocol import Engine
from simlab.frame.render import framing_of
from simlab.frame.window import Fitted, fit_prompt
from simlab.session.store import Session
from simlab.session.tree import Node
from simlab.turns.replies import Replies, steered


@dataclass(frozen=True)
class Forced:
    """A reply's first tokens given rather than sampled (/fork): the sampled reply's tokens before
    position `at`, then the chosen one(s), teacher-forced so they carry log-probabilities."""

    source: Node
    at: int
    tokens: list  # TokenInfo
    text: str
    choice: str  # "alternative 2", or "typed"


def start_fork(
    engine: Engine,
    session: Session,
    node: Node,
    at: int,
    chosen: list[int],
    choice: str,
    params: SamplingParams,
    on_fit: Callable[[Fitted], None] | None = None,
    steering: Any = None,
) -> Replies:
    """Branch a sampled reply at token `at`: its tokens before it, then `chosen` (ids) instead of
    what was sampled there, and the model writes on from those as a new sibling."""
    forced_ids = list(node.token_ids[:at]) + list(chosen)
    where = (node.parent, node.speaker, node.persona)
    return start_forced(
        engine, session, node, forced_ids, at, choice, params, where, on_fit, steering=steering
    )


def start_forced(
    engine: Engine,
    session: Session,
    source: Node,
    forced_ids: list[int],
    at: int,
    choice: str,
    params: SamplingParams,
    where: tuple[str, str | None, str | None],
    on_fit: Callable[[Fitted], None] | None = None,
    origin: str = "sampled",
    steering: Any = None,
) -> Replies:
    """A reply that starts with `forced_ids` (teacher-forced, so they carry log-probabilities) and
    goes on sampled, saved under `where` = (parent id, speaker, persona): /fork beside its source,
    or a forked reply replayed under another persona."""
    parent_id, speaker, persona = where
    path = session.tree.path(parent_id)
    framing = framing_of(path)
    fit = fit_prompt(path, speaker, engine, params.max_new_tokens + len(forced_ids))
    if on_fit is not None:
        on_fit(fit)
    prompt = fit.prompt
    prompt_ids = engine.encode(prompt) if isinstance(prompt, str) else list(prompt)
    tokens = engine.score_tokens(prompt_ids + forced_ids, len(prompt_ids), **steered(steering))
    text = engine.tokenizer.decode(forced_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    run = engine.start(prompt_ids + forced_ids, params, **steered(steering))
    made = (session, parent_id, engine, params, fit, framing, speaker, origin, persona, run)
    return Replies(*made, forces=Forced(source, at, tokens, text, choice), steering=steering)
