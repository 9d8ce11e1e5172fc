"""From a path in a session tree to the model's next turn, and from sampled completions to nodes.

The prompt for a reply is the path's transcript followed by the replying speaker's label
("Bot:"); the reply's stop string is by default the next user label on a new line. Sampled text
usually begins with the space after the label; that one space belongs to the turn template, so it
is not stored in the node's text.
"""

from __future__ import annotations

from dataclasses import asdict

from simlab.engine import Completion, Engine
from simlab.sampling import SamplingParams
from simlab.store import Session
from simlab.tree import Node, render_path


def reply_prompt(session: Session, parent_id: str, speaker: str) -> str:
    return render_path(session.tree.path(parent_id)) + f"{speaker}:"


def reply_text(generated: str) -> str:
    return generated[1:] if generated.startswith(" ") else generated


def node_fields(completion: Completion, params: SamplingParams, engine: Engine) -> dict:
    """What a sampled node records about how it was made."""
    return {
        "token_ids": tuple(completion.token_ids),
        "logprobs": tuple(t.logprob for t in completion.tokens),
        "top": tuple(t.top for t in completion.tokens),
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(params).items()
                   if k != "seed"},
        "seed": completion.seed,
        "finish_reason": completion.finish_reason,
        "model": engine.info.spec,
        "model_revision": engine.info.revision,
    }


def sample_replies(
    engine: Engine,
    session: Session,
    parent_id: str,
    speaker: str,
    params: SamplingParams,
    n: int = 1,
    origin: str = "sampled",
    persona: str | None = None,
) -> list[Node]:
    """Sample n sibling replies under parent_id and save each as a node."""
    completions = engine.generate(reply_prompt(session, parent_id, speaker), params, n=n)
    return [
        session.add_child(parent_id, "model", reply_text(c.text), speaker=speaker, origin=origin,
                          persona=persona, **node_fields(c, params, engine))
        for c in completions
    ]
