"""What the Chat says about what happens under the conversation, beside the turns: the model's
first use, a session file that refuses writes, older turns left out of the context window, a trace
that could not be saved. Each is said once per change, through the Chat's view."""

from __future__ import annotations

from simlab.engine.protocol import Engine
from simlab.frame.window import Fitted
from simlab.session.tree import Node


class Notes:
    """A part of repl.state.Chat: its `view`, `session`, `tree`, `framing` and `engine`."""

    _first_use = True  # the model's first use notes what it has (a chat template)
    _window_noted = False  # the context window note is shown once
    _save_failing = False
    _told_own_turn = False  # moving to a turn of the user's says once what Enter and typing do there

    def _first_use_notes(self, engine: Engine) -> None:
        if not self._first_use:
            return
        self._first_use = False
        if self.framing.mode == "simulator" and getattr(engine.tokenizer, "chat_template", None):
            self.view.note(
                f"note: {engine.info.name} has a chat template; --mode chat (or `mode: chat` in a "
                "persona) uses it instead of the simulator transcript"
            )

    def _save_problem(self, message: str) -> None:
        """The session's file refused a write (or took the backlog again): say so once per change of state."""
        if not self.session.unsaved:
            self._save_failing = False
            self.view.note(f"simlab: {message}")
        elif not self._save_failing:
            self._save_failing = True
            self.view.note(
                f"simlab: {message}; the conversation goes on in memory and is written when the disk "
                "takes it again; /export jsonl FILE writes the whole session elsewhere now"
            )

    def _note_window(self, fit: Fitted) -> None:
        """The first time older turns are left out of what the model reads, say so."""
        if fit.window and not self._window_noted:
            self._window_noted = True
            kept = sum(1 for node in fit.path if node.role in ("user", "model"))
            turns = "turn" if kept == 1 else f"{kept} turns"
            info = self.engine.info
            self.view.note(
                f"(the conversation is longer than {info.name}'s context of {info.context_length} tokens: "
                f"the model now reads the frame and the last {turns}; the session keeps them all, and "
                "each reply records its window)"
            )

    def _trace_failed(self, node: Node, exc: OSError) -> None:
        self.view.note(
            f"simlab: could not save the trace of {self.tree.short(node.id)}: {exc.strerror}; "
            "the reply is saved"
        )
