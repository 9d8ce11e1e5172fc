"""Replies sampled under a node and saved: the REPL, replay and compare all come here.

`start_replies` fits the prompt to the context and starts the run; the caller decodes it (streaming
each delta through a callback, as simonw/llm's chat loop takes `prompt_callback`), then `save` keeps
each completion as a model node with everything needed to reproduce it, and its trace. Also here:
starting a session from a persona, and an unsaved path for previews.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from simlab.engine.params import SamplingParams
from simlab.engine.protocol import Engine, Run
from simlab.engine.results import Completion, Delta
from simlab.errors import ContextRefused
from simlab.frame.framing import Framing
from simlab.frame.render import PIECE, framing_of, reply_prompt, reply_text
from simlab.frame.window import Fitted, fit_prompt
from simlab.persona.schema import Persona
from simlab.session.store import Session, SessionStore
from simlab.session.tree import Node, Tree
from simlab.turns.servers import note_server

DeltaCallback = Callable[[Delta], bool | None]  # returns True to stop the run
FRAME_PERSONA: Any = object()  # a reply's persona by default: the one its path's frame was made with


def add_frame(session: Session, persona: Persona) -> Node:
    """A new root: the persona's rendered frame, then its greeting(s) as model turns.

    Returns the node to continue from (the first greeting, or the frame)."""
    frame = session.add_child(
        None, "frame", persona.render_frame(), persona=persona.name, framing=persona.framing().to_dict()
    )
    speaker = None if persona.mode == "document" else persona.model  # a document's text goes on
    greetings = [
        session.add_child(frame.id, "model", text, speaker=speaker, persona=persona.name)
        for text in persona.greetings()
    ]
    return greetings[0] if greetings else frame


def start_session(
    store: SessionStore, persona: Persona, name: str | None = None, in_memory: bool = False
) -> Session:
    session = (store.create_in_memory if in_memory else store.create)(name, persona=persona.name)
    session.goto(add_frame(session, persona).id)
    return session


def unsaved_path(persona: Persona, exchanges: Iterable[tuple[str, str | None]]) -> list[Node]:
    """A path that is not saved anywhere: the persona's frame, its first greeting, then each (user turn,
    reply) exchange (a reply of None ends the path at the user turn). For previews and scoring."""
    tree = Tree()
    parent = tree.add_child(None, "frame", persona.render_frame(), framing=persona.framing().to_dict())
    greetings = persona.greetings()
    if greetings:
        parent = tree.add_child(parent.id, "model", greetings[0], speaker=persona.model)
    for turn, reply in exchanges:
        parent = tree.add_child(parent.id, "user", turn, speaker=persona.user)
        if reply is not None:
            parent = tree.add_child(parent.id, "model", reply, speaker=persona.model)
    return tree.path(parent.id)


def node_fields(
    completion: Completion,
    params: SamplingParams | None,
    engine: Engine,
    window: dict[str, Any] | None = None,
    steering: Any = None,
) -> dict:
    """What a sampled node records about how it was made (a server's reply: no token ids, and where
    it came from; never the API key)."""
    local = engine.capabilities.local
    return {
        "window": window,
        "backend": engine.provenance(completion),
        "token_ids": tuple(completion.token_ids) if engine.capabilities.token_ids else (),
        "logprobs": tuple(t.logprob for t in completion.tokens),
        "top": tuple(t.top for t in completion.tokens),
        "params": params.as_record() if params is not None else None,
        "seed": completion.seed if params is not None else None,
        "finish_reason": completion.finish_reason,
        "model": engine.info.spec,
        "model_revision": engine.info.revision or None,
        "dtype": engine.info.dtype if local else None,
        "weights": None if not local or engine.info.weights == "float" else engine.info.weights,
        "prefill": tuple(completion.prefill) if local else (),
        "steer": steering.record() if steering else None,
    }


def _joined(text: str, framing: Framing) -> str:
    """A continued reply's text: a document keeps its white space (its pieces join into one text)."""
    return text if framing.mode == "document" else text.rstrip()


def has_output(completion: Completion) -> bool:
    """A completion worth keeping: interrupted before its first token, it has nothing."""
    return bool(completion.tokens or completion.text)


@dataclass
class Replies:
    """Replies being sampled under a node: the run, and what saving them needs."""

    session: Session
    parent_id: str
    engine: Engine
    params: SamplingParams
    fit: Fitted
    framing: Framing
    speaker: str | None  # None: a document's continuation
    origin: str
    persona: str | None
    run: Run
    tracer: Any = None
    recorder: Any = None
    continues: Node | None = None  # /continue: the reply this run extends
    forces: Any = None  # turns.forks.Forced, on /fork: the tokens the reply starts with, chosen, not sampled
    piece_of: Node | None = None  # a split turn's piece this run goes on from (turns.pieces)
    nodes: list[Node] = field(default_factory=list)
    restart: Callable[[], tuple[Fitted, Run]] | None = None  # fit and start again (a refused prompt)
    steering: Any = None  # engine.steering.Steering: the vectors the replies are steered with

    def decode(self, on_delta: DeltaCallback | None = None) -> None:
        """Decode to the end, handing each delta to on_delta (True from it stops the run); Ctrl-C
        stops it too. Stopped branches keep their text, finish reason 'interrupted'.

        A server that refuses the prompt as over its context, naming its context, teaches the
        engine that context: the window slides to fit it and the run starts again, once."""
        try:
            self._decode(on_delta)
        except ContextRefused as exc:
            if self.restart is None:
                raise
            self.engine.learn_context(exc)  # raises again, saying what would help, if it learns nothing
            self.fit, self.run = self.restart()
            self._decode(on_delta)

    def _decode(self, on_delta: DeltaCallback | None) -> None:
        try:
            for delta in self.run:
                if on_delta is not None and on_delta(delta):
                    self.run.interrupt()
        except KeyboardInterrupt:  # raised in on_delta: the engine catches its own
            self.run.interrupt()

    def save(
        self,
        keep: Callable[[Completion], bool] = has_output,
        on_trace_error: Callable[[Node, OSError], None] | None = None,
        **trace_extra: Any,
    ) -> list[Node]:
        """Each kept completion as a model node under the parent (with the window it read), and its trace."""
        for completion in self.run.completions:
            if keep(completion):
                self.nodes.append(self._save_one(completion))
                self._save_trace(completion, self.nodes[-1], on_trace_error, trace_extra)
        if self.nodes:
            note_server(self.session, self.engine)
        return self.nodes

    def _steered(self, completion: Completion) -> Any:
        """The steering this completion was sampled with (siblings may each have their own)."""
        rows = self.steering
        return rows[completion.index] if isinstance(rows, (list, tuple)) else rows

    def _save_one(self, completion: Completion) -> Node:
        steer = self._steered(completion)
        if self.forces is not None:
            return self._save_forced(completion)
        if self.piece_of is not None:  # the rest of a split turn: its next piece, no label of its own
            return self.session.add_child(
                self.piece_of.id,
                "model",
                completion.text.rstrip(),
                speaker=self.piece_of.speaker,
                origin=self.origin,
                persona=self.persona,
                tags=frozenset({PIECE}),
                **node_fields(completion, self.params, self.engine, self.fit.window, steer),
            )
        if self.continues is None:
            return self.session.add_child(
                self.parent_id,
                "model",
                reply_text(completion.text, self.framing),
                speaker=self.speaker,
                origin=self.origin,
                persona=self.persona,
                **node_fields(completion, self.params, self.engine, self.fit.window, steer),
            )
        # Two samplings joined: the tokens and log-probabilities are the continuation's, and without
        # one (params, seed) that draws the whole text, replay copies it rather than re-sampling it.
        node = self.continues
        return self.session.add_child(
            node.parent,
            "model",
            _joined(node.text + completion.text, self.framing),
            speaker=node.speaker,
            origin="sampled",
            persona=node.persona,
            edited_from=node.id,
            tags=frozenset({"continued"}),
            **node_fields(completion, None, self.engine, self.fit.window, steer),
        )

    def _save_forced(self, completion: Completion) -> Node:
        """The forced tokens and the sampled rest as one reply beside the one it branched from;
        params and seed draw the rest, so replay re-runs it after the forced tokens."""
        forced, steer = self.forces, self._steered(completion)
        fields = node_fields(completion, self.params, self.engine, self.fit.window, steer)
        fields["token_ids"] = tuple(t.id for t in forced.tokens) + fields["token_ids"]
        fields["logprobs"] = tuple(t.logprob for t in forced.tokens) + fields["logprobs"]
        fields["top"] = tuple(t.top for t in forced.tokens) + fields["top"]
        return self.session.add_child(
            self.parent_id,
            "model",
            reply_text(forced.text + completion.text, self.framing),
            speaker=self.speaker,
            origin=self.origin,  # sampled (or replayed): the part after the forced tokens is a draw
            persona=self.persona,
            edited_from=forced.source.id,
            forced={
                "from": forced.source.id,
                "at": forced.at,
                "tokens": len(forced.tokens),
                "choice": forced.choice,
            },
            tags=frozenset({"forked"}),
            **fields,
        )

    def _save_trace(self, completion: Completion, node: Node, on_error, extra: dict[str, Any]) -> None:
        if self.recorder is None:
            return
        try:
            self.tracer.save_node(self.session, node.id, self.recorder, self.run, completion, **extra)
        except OSError as exc:
            if on_error is None:
                raise
            on_error(node, exc)


def start_replies(
    engine: Engine,
    session: Session,
    parent_id: str,
    params: SamplingParams,
    n: int = 1,
    *,
    speaker: str | None = None,
    origin: str = "sampled",
    persona: str | None = FRAME_PERSONA,
    tracer: Any = None,
    on_fit: Callable[[Fitted], None] | None = None,
    steering: Any = None,
) -> Replies:
    """Fit the prompt for replies under parent_id and start sampling n of them (siblings, one batch),
    steered by `steering` (engine.steering.Steering) when given."""
    path = session.tree.path(parent_id)
    framing = framing_of(path)
    speaker = speaker or (None if framing.mode == "document" else framing.model)
    recorder = tracer.recorder(engine) if tracer else None

    def begin() -> tuple[Fitted, Run]:
        fit = fit_prompt(path, speaker, engine, params.max_new_tokens)
        if on_fit is not None:
            on_fit(fit)
        return fit, engine.start(fit.prompt, params, n=n, recorder=recorder, **steered(steering))

    fit, run = begin()
    persona = path[0].persona if persona is FRAME_PERSONA else persona
    made = (session, parent_id, engine, params, fit, framing, speaker, origin, persona, run, tracer)
    return Replies(*made, recorder, restart=begin, steering=steering)


def start_continuation(
    engine: Engine,
    session: Session,
    node: Node,
    params: SamplingParams,
    on_fit: Callable[[Fitted], None] | None = None,
    steering: Any = None,
) -> Replies:
    """Start extending a saved reply: the model reads the reply so far and writes on (steered by
    `steering` when given)."""
    path = session.tree.path(node.parent)
    framing = framing_of(path)
    tokenizer = engine.tokenizer
    written = tokenizer.encode(node.text, add_special_tokens=False) if tokenizer is not None else []
    fit = fit_prompt(path, node.speaker, engine, params.max_new_tokens + len(written))
    if on_fit is not None:
        on_fit(fit)
    prompt = reply_prompt(fit.path, node.speaker, tokenizer)
    prompt = prompt + framing.lead() + node.text if isinstance(prompt, str) else prompt + written
    run = engine.start(prompt, params, **steered(steering))
    return _beside(node, engine, session, params, fit, framing, run, continues=node, steering=steering)


def steered(steering: Any) -> dict[str, Any]:
    """The engine's `steering` argument, only when there is one (an engine that cannot steer never
    sees it)."""
    return {"steering": steering} if steering else {}


def _beside(node: Node, engine, session, params, fit, framing, run, **extra: Any) -> Replies:
    """Replies saved as siblings of `node`, spoken as it was (its speaker, its persona)."""
    return Replies(
        session,
        node.parent,
        engine,
        params,
        fit,
        framing,
        node.speaker,
        "sampled",
        node.persona,
        run,
        **extra,
    )


def sample_replies(
    engine: Engine,
    session: Session,
    parent_id: str,
    params: SamplingParams,
    n: int = 1,
    *,
    keep: Callable[[Completion], bool] = has_output,
    on_run: Callable[[Replies], None] | None = None,
    **options: Any,
) -> list[Node]:
    """Sample n sibling replies under parent_id to the end and save each as a node; `on_run` gets
    the decoded run (its figures: tokens per second, time to first token)."""
    replies = start_replies(engine, session, parent_id, params, n, **options)
    replies.decode()
    if on_run is not None:
        on_run(replies)
    return replies.save(keep)
