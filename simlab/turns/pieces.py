"""The rest of a split turn sampled again: a turn split in two pieces (the Loom editor's `s`) goes on
from its first piece, so a new continuation is the model writing on inside that turn (no label of
its own, as `g` continues a document), saved as another piece beside the old rest."""

from __future__ import annotations

from typing import Any

from simlab.engine.params import SamplingParams
from simlab.engine.protocol import Engine
from simlab.errors import SimlabError
from simlab.frame.render import PIECE, framing_of, open_turn
from simlab.frame.window import Fitted
from simlab.session.store import Session
from simlab.session.tree import Node
from simlab.turns.replies import Replies, steered


def start_piece(
    engine: Engine,
    session: Session,
    piece: Node,
    params: SamplingParams,
    n: int = 1,
    *,
    origin: str = "sampled",
    steering: Any = None,
    tracer: Any = None,
) -> Replies:
    """n continuations of the turn `piece` is a part of, written on from its end."""
    path = session.tree.path(piece.id)
    framing = framing_of(path)
    if framing.mode == "chat":
        raise SimlabError(
            "a split turn goes on in the transcript's text; in chat mode (the model's chat template) "
            "sample a whole reply instead: move to the turn before it"
        )
    prompt = open_turn(path)
    recorder = tracer.recorder(engine) if tracer else None
    run = engine.start(prompt, params, n=n, recorder=recorder, **steered(steering))
    fit = Fitted(prompt, path)
    made = (
        session,
        piece.id,
        engine,
        params,
        fit,
        framing,
        piece.speaker,
        origin,
        piece.persona,
        run,
        tracer,
    )
    return Replies(*made, recorder, piece_of=piece, steering=steering)


def is_piece(node: Node) -> bool:
    """A later piece of a split turn (of a speaker: a document's pieces are continuations as they are)."""
    return PIECE in node.tags and node.speaker is not None
