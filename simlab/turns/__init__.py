"""The one place replies are sampled under a node and saved: the REPL, replay and compare all come
here. replies (a run's replies, started and saved; a session started from a persona), forks (a
reply whose first tokens are given: /fork), pieces (the rest of a split turn sampled again)."""

from simlab.turns.forks import Forced, start_forced, start_fork
from simlab.turns.pieces import is_piece, start_piece
from simlab.turns.replies import (
    FRAME_PERSONA,
    DeltaCallback,
    Replies,
    add_frame,
    has_output,
    node_fields,
    sample_replies,
    start_continuation,
    start_replies,
    start_session,
    unsaved_path,
)

__all__ = [
    "FRAME_PERSONA",
    "DeltaCallback",
    "Forced",
    "Replies",
    "add_frame",
    "has_output",
    "is_piece",
    "node_fields",
    "sample_replies",
    "start_continuation",
    "start_fork",
    "start_forced",
    "start_piece",
    "start_replies",
    "start_session",
    "unsaved_path",
]
