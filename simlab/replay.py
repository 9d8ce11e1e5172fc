"""Replay a path: re-run its user turns and compare (or re-sample) every model reply on it."""

from __future__ import annotations

from dataclasses import dataclass, fields

from simlab.conversation import node_fields, reply_prompt, reply_text
from simlab.engine import Engine
from simlab.errors import SimlabError
from simlab.sampling import SamplingParams
from simlab.store import Session
from simlab.tree import Node


@dataclass
class ReplyCheck:
    node: Node
    reproduced: bool
    first_difference: int | None = None  # token index
    expected: str | None = None
    got: str | None = None


def params_of(node: Node, overrides: dict) -> SamplingParams:
    known = {f.name for f in fields(SamplingParams)}
    stored = {k: v for k, v in (node.params or {}).items() if k in known}
    stored["seed"] = node.seed
    if "stop" in stored:
        stored["stop"] = tuple(stored["stop"])
    return SamplingParams(**{**stored, **overrides})


def model_replies(path: list[Node]) -> list[Node]:
    return [n for n in path if n.role == "model" and n.params is not None]


def check_path(engine: Engine, session: Session, path: list[Node]) -> list[ReplyCheck]:
    """Regenerate each sampled reply on the path with its own params and seed; compare token ids."""
    checks = []
    for node in model_replies(path):
        params = params_of(node, {})
        [c] = engine.generate(reply_prompt(session, node.parent, node.speaker), params)
        if c.token_ids == list(node.token_ids):
            checks.append(ReplyCheck(node, True))
            continue
        k = next((i for i, (a, b) in enumerate(zip(c.token_ids, node.token_ids)) if a != b),
                 min(len(c.token_ids), len(node.token_ids)))
        decode = engine.tokenizer.decode
        checks.append(ReplyCheck(
            node, False, k,
            expected=decode([node.token_ids[k]]) if k < len(node.token_ids) else "(end)",
            got=decode([c.token_ids[k]]) if k < len(c.token_ids) else "(end)",
        ))
    return checks


def replay_branch(engine: Engine, session: Session, path: list[Node], overrides: dict) -> list[Node]:
    """Re-sample the path's replies under overrides as a new branch beside the original one.

    The branch forks at the first sampled reply: each later user turn is copied (origin
    'replayed') under the new reply before it, and each reply is sampled anew.
    """
    replies = model_replies(path)
    if not replies:
        raise SimlabError("this path has no sampled replies to replay; pick a node below a reply with --node")
    start = path.index(replies[0])
    parent = replies[0].parent
    added = []
    for node in path[start:]:
        if node.role == "model" and node.params is not None:
            params = params_of(node, overrides)
            [c] = engine.generate(reply_prompt(session, parent, node.speaker), params)
            new = session.add_child(parent, "model", reply_text(c.text), speaker=node.speaker,
                                    origin="replayed", persona=node.persona, **node_fields(c, params, engine))
        else:
            new = session.add_child(parent, node.role, node.text, speaker=node.speaker, origin="replayed",
                                    persona=node.persona)
        added.append(new)
        parent = new.id
    session.goto(added[-1].id)
    return added
