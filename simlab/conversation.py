"""From a persona and a path in a session tree to the model's next turn, and back to nodes.

Simulator mode: the prompt is the path's transcript (the frame, then each turn through the
persona's turn template) followed by the replying speaker's label ("Guest:"). The label's trailing
space is left for the model to write, since BPE vocabularies attach it to the next word; that
space belongs to the turn template, so it is not stored in the node's text. Chat mode: the frame
becomes the system message and the turns go through the model's own chat template.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from simlab.errors import ContextLengthError, SimlabError
from simlab.params import SamplingParams
from simlab.persona import Framing, Persona
from simlab.store import Session, SessionStore
from simlab.tree import Node, render_path

if TYPE_CHECKING:  # the REPL starts before torch is imported
    from simlab.engine import Completion, Engine


def framing_of(path: list[Node]) -> Framing:
    """The framing the path's frame node recorded (the plain default for frames without one)."""
    root = path[0] if path else None
    return Framing.from_dict(root.framing if root is not None and root.role == "frame" else None)


def add_frame(session: Session, persona: Persona) -> Node:
    """A new root: the persona's rendered frame, then its greeting(s) as model turns.

    Returns the node to continue from (the first greeting, or the frame)."""
    frame = session.add_child(None, "frame", persona.render_frame(), persona=persona.name,
                              framing=Framing.of(persona).to_dict())
    greetings = [session.add_child(frame.id, "model", text, speaker=persona.model, persona=persona.name)
                 for text in persona.greetings()]
    return greetings[0] if greetings else frame


def start_session(store: SessionStore, persona: Persona, name: str | None = None, in_memory: bool = False) -> Session:
    session = (store.create_in_memory if in_memory else store.create)(name, persona=persona.name)
    session.goto(add_frame(session, persona).id)
    return session


def reply_prompt(path: list[Node], speaker: str, tokenizer: Any = None) -> str | list[int]:
    """What the model reads before replying as `speaker` after `path`: text, or ids in chat mode."""
    framing = framing_of(path)
    if framing.mode == "chat":
        return chat_prompt_ids(path, speaker, tokenizer)
    return render_path(path) + framing.label("model", speaker)


@dataclass(frozen=True)
class Fitted:
    """A reply's prompt as token ids, and the part of the path it reads."""

    prompt: list[int] | str  # token ids; text for a server (its tokenizer is not here)
    path: list[Node]  # the frame, then the turns that fit
    window: dict[str, Any] | None = None  # set when older turns were left out (recorded on the reply)


def windowed(path: list[Node], first: str) -> list[Node]:
    """The path as the model reads it from turn `first` on: the frame, then that turn and later ones."""
    at = next((i for i, node in enumerate(path) if node.id == first), None)
    if at is None:
        raise SimlabError(f"the context window starts at node {str(first)[:8]}, which is not on this path")
    head = path[:1] if path and path[0].role == "frame" else []
    return head + path[max(at, len(head)):]


def fit_prompt(path: list[Node], speaker: str, engine: Engine, max_new_tokens: int) -> Fitted:
    """The prompt for the next reply, sliding the window at turn boundaries when it outgrows the context.

    The frame always stays. While the whole transcript and max_new_tokens fit, nothing is left out.
    Once they do not, the oldest turns go, a quarter of the context more than needed, so that the
    window moves seldom and the turns after its start keep their cached keys and values; a window
    recorded earlier on the path is kept while it fits. If even the frame and the last turn leave
    less than max_new_tokens, the engine clips the reply to the room there is.
    """
    if engine.tokenizer is None:  # a server: it counts the tokens, and says when they do not fit
        return Fitted(reply_prompt(path, speaker, None), path)
    head = path[:1] if path and path[0].role == "frame" else []
    turns = path[len(head):]
    limit = engine.info.context_length

    def ids_for(k: int) -> list[int]:
        prompt = reply_prompt(head + turns[k:], speaker, engine.tokenizer)
        return engine.encode(prompt) if isinstance(prompt, str) else prompt

    def fitted(k: int, ids: list[int]) -> Fitted:
        window = {"from": turns[k].id, "dropped": k, "prompt_tokens": len(ids)} if k else None
        return Fitted(ids, head + turns[k:], window)

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
            f"{limit}; shorten the turn, or use a persona with a shorter frame or a model with a longer context")
    return fitted(last, ids)


def chat_prompt_ids(path: list[Node], speaker: str, tokenizer: Any) -> list[int]:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise SimlabError("this persona is in chat mode but the model has no chat template; "
                          "use an instruct model or set `mode: simulator` in the persona")
    messages = []
    for node in path:
        if node.role == "frame" and node.text.strip():
            messages.append({"role": "system", "content": node.text})
        elif node.role in ("user", "model"):
            role = "assistant" if node.speaker == speaker else "user"
            messages.append({"role": role, "content": node.text})
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def reply_text(generated: str, framing: Framing) -> str:
    """A reply's text as stored: without the label's trailing space the model wrote, and without
    trailing whitespace (the turn template writes the turn's end)."""
    if framing.mode == "chat":
        return generated.strip()
    lead = framing.lead()
    text = generated[len(lead):] if lead and generated.startswith(lead) else generated
    return text.rstrip()


def node_fields(completion: Completion, params: SamplingParams, engine: Engine,
                window: dict[str, Any] | None = None) -> dict:
    """What a sampled node records about how it was made (a server's reply: no token ids, and where
    it came from; never the API key)."""
    remote = engine.model is None
    backend = None
    if remote:
        backend = {"kind": "openai", "base_url": engine.config.base_url, **(completion.server or {}),
                   "honoured": dict(engine.honoured)}
        if completion.tokens:  # token texts (a server gives no ids), for /tokens
            backend["tokens"] = [t.text for t in completion.tokens]
    return {
        "window": window,
        "backend": backend,
        "token_ids": () if remote else tuple(completion.token_ids),
        "logprobs": tuple(t.logprob for t in completion.tokens),
        "top": tuple(t.top for t in completion.tokens),
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(params).items()
                   if k != "seed"},
        "seed": completion.seed,
        "finish_reason": completion.finish_reason,
        "model": engine.info.spec,
        "model_revision": engine.info.revision or None,
        "dtype": None if remote else engine.info.dtype,
    }


def add_reply(session: Session, parent_id: str, completion: Completion, params: SamplingParams, engine: Engine,
              framing: Framing, speaker: str, origin: str = "sampled", persona: str | None = None,
              window: dict[str, Any] | None = None) -> Node:
    """Save one sampled completion as a model node under parent_id (with the context window it read)."""
    return session.add_child(parent_id, "model", reply_text(completion.text, framing), speaker=speaker,
                             origin=origin, persona=persona, **node_fields(completion, params, engine, window))


def exchange_path(persona: Persona, turn: str) -> list[Node]:
    """An unsaved path: the persona's frame, its first greeting, and one user turn (for previews)."""
    from simlab.tree import Tree

    tree = Tree()
    parent = tree.add_child(None, "frame", persona.render_frame(), framing=Framing.of(persona).to_dict())
    greetings = persona.greetings()
    if greetings:
        parent = tree.add_child(parent.id, "model", greetings[0], speaker=persona.model)
    user = tree.add_child(parent.id, "user", turn, speaker=persona.user)
    return tree.path(user.id)


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
    path = session.tree.path(parent_id)
    framing = framing_of(path)
    fit = fit_prompt(path, speaker, engine, params.max_new_tokens)
    completions = engine.generate(fit.prompt, params, n=n)
    persona = persona if persona is not None else path[0].persona
    return [add_reply(session, parent_id, c, params, engine, framing, speaker, origin, persona, fit.window)
            for c in completions]
