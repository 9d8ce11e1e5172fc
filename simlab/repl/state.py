"""The REPL's state, and each action as a few lines over the layers below, with no terminal library here.

A `Chat` holds the engine (loading in the background at first), the open session (its cursor is where
the user is in the tree), the persona, the sampling settings and the next seed. Sampling and saving
go through simlab.turns, exports through session.formats, settings through the knob table; every
reply is saved as a node the moment it is complete, so nothing finished can be lost.
"""

from __future__ import annotations

from concurrent.futures import Future

from simlab.engine.params import BY_FIELD, BY_KEY, SamplingParams, SeedCounter
from simlab.engine.protocol import Engine
from simlab.errors import SimlabError, TreeError
from simlab.frame.framing import Framing
from simlab.frame.render import framing_of, render_path
from simlab.persona.schema import Persona
from simlab.repl.loading import Loading
from simlab.repl.notes import Notes
from simlab.repl.progress import LastReply
from simlab.repl.steering import remembered, steering_for
from simlab.repl.view import View
from simlab.session.started import persona_at, persona_of, stops_of
from simlab.session.store import Session, SessionStore
from simlab.session.tree import Node
from simlab.turns import (
    Replies,
    has_output,
    is_piece,
    start_continuation,
    start_fork,
    start_piece,
    start_replies,
    start_session,
)

SETTABLE = (*BY_KEY, "stop")  # what /set takes: every sampling knob by its user key, and the stops


class Chat(Notes):
    """The REPL's state and actions; what happens is shown through `view` (repl.view.View)."""

    def __init__(
        self,
        engine: Engine | Future | Loading,
        store: SessionStore,
        session: Session,
        persona: Persona,
        params: SamplingParams,
        view: View,
        tracer=None,
        user_set: dict | None = None,
    ):
        self.loading = engine if isinstance(engine, Loading) else Loading(engine)
        self.store = store
        self.session = session
        self.persona = persona
        self._root = session.tree.path(session.tree.cursor)[0].id if session.tree.cursor else None
        self.params = params.with_overrides(seed=None)
        # what the user chose (flags, /set) by SamplingParams field: kept when the persona changes
        self.user_set: dict = dict(user_set or {})
        self.seeds = SeedCounter(params.seed)  # the next reply's seed, then +1 per reply
        self.view = view
        view.attach(self)
        self.last: LastReply | None = None
        self.tracer = tracer  # a trace.record.Tracer while the residual stream is recorded
        if tracer is not None:  # what it says goes where the chat's notes go (the Loom's pane too)
            tracer.say = lambda text: self.view.note(text)
        self.running = None  # the Run being decoded (another thread may interrupt it)
        self.steer_uses: list = []  # steer.use.Use: the vectors replies are steered with (/steer)
        self.steer_positions = "all"
        self.broken_pipe = False  # stdout was closed under a reply: the reply is saved, then the REPL ends
        self.stopping: int | None = None  # the signal (SIGTERM, SIGHUP) that asked the REPL to end
        self.interruptible = False  # True while a signal may cut in (while decoding, reading a line)
        self.exit_app = None  # while a prompt-toolkit app runs: ends it on a signal (repl.app_exit)
        self.cancel_requested = False  # Ctrl-C came while it could not cut in: stop at the next step
        self.keeps_empty = True  # False: a session left as it started is removed at the end (cli.chat)
        self.multiverse = None  # repl.multiverse.Universe: the multiverse shown last (/multiverse, Loom M)
        self._watch(session)
        if self.loading.ready:
            self._first_use_notes(self.loading.engine())

    @classmethod
    def new(
        cls,
        engine: Engine,
        store: SessionStore,
        persona: Persona,
        params: SamplingParams,
        view: View,
        **kwargs,
    ) -> Chat:
        return cls(engine, store, start_session(store, persona), persona, params, view, **kwargs)

    @property
    def seed(self) -> int | None:
        return self.seeds.next

    @property
    def engine(self) -> Engine:
        """The engine; while it loads in the background, the first use waits for it."""
        if self.loading.loading:
            self.loading.tell(self.view.waiting)
        self.interruptible = True
        try:
            engine = self.loading.engine()
        finally:
            self.interruptible = False
        self._first_use_notes(engine)
        return engine

    def steering(self, n: int = 1):
        """What the next n replies add to the residual stream (repl.steering.steering_for)."""
        return steering_for(self, n)

    def interrupt(self) -> bool:
        """Stop what runs (from another thread): the reply being decoded (what came is saved), or
        work made of steps at its next step. False when nothing runs."""
        run = self.running
        if run is not None:
            run.interrupt()
        self.cancel_requested = True
        return run is not None

    # -- where we are --------------------------------------------------------------------------
    @property
    def tree(self):
        return self.session.tree

    @property
    def cursor(self) -> Node:
        if self.tree.cursor is None:
            raise SimlabError("the session is empty")
        return self.tree.get(self.tree.cursor)

    def path(self) -> list[Node]:
        return self.tree.path(self.tree.cursor) if self.tree.cursor else []

    @property
    def framing(self) -> Framing:
        path = self.path()
        return framing_of(path) if path else self.persona.framing()

    def speaker(self, role: str) -> str | None:
        """Who speaks a new turn of `role`: the framing's label, or no one in a document."""
        framing = self.framing
        return None if framing.mode == "document" else getattr(framing, role)

    def persona_name(self) -> str | None:
        path = self.path()
        return (path[0].persona if path else None) or self.persona.name

    def place(self, node: Node) -> str:
        """A node's position among its siblings, as the toolbar, /tree and /pick count: "2/4"."""
        siblings = [s.id for s in self.tree.siblings(node.id)]
        return f"{siblings.index(node.id) + 1}/{len(siblings)}"

    def position(self) -> tuple[int, int, int]:
        """(depth, sibling index from 1, number of siblings) of the cursor."""
        node = self.cursor
        ids = [s.id for s in self.tree.siblings(node.id)]
        return len(self.path()) - 1, (ids.index(node.id) + 1 if node.id in ids else 1), len(ids)

    def transcript(self) -> str:
        return render_path(self.path())

    # -- saving -------------------------------------------------------------------------------
    def _watch(self, session: Session) -> None:
        session.on_save_problem = self._save_problem
        if session.in_memory:
            self.view.note(
                f"simlab: the sessions folder {self.store.folder} cannot take session {session.name!r}; "
                "the conversation is kept in memory: /export jsonl FILE writes it elsewhere"
            )

    # -- turns and replies --------------------------------------------------------------------
    def user_turn(self, text: str) -> list[Node]:
        """Add the user's turn under the cursor and stream the model's reply to it."""
        if not text.strip():
            return []
        after = self.cursor
        self.steering(0)  # (a vector that does not fit the model is refused before the turn is saved)
        user = self.session.add_child(
            after.id, "user", text, speaker=self.speaker("user"), persona=self.persona_name()
        )
        self.session.goto(user.id)
        if after.role == "user":  # text typed at a node is its child, as in the Loom editor: say so
            self.view.note(
                f"(a 2nd turn of yours, after your turn [{self.place(after)}]: the reply reads both)"
            )
        return self.reply(user.id)

    def start_reply(self, parent_id: str, n: int = 1) -> Replies:
        """n replies under parent_id, started (seeds, stops, tracer, window noted): both faces begin
        a reply here, the chat to stream it and the Loom editor to draw it, and end it with `kept`."""
        self.session.check_writable()  # (a read-only session: say so before sampling, not after)
        params = self.params.with_overrides(seed=self.seeds.take(n))
        parent = self.tree.get(parent_id)
        if parent.role == "model" and any(is_piece(c) for c in self.tree.children(parent_id)):
            # the first piece of a split turn: its rest again, written on inside the turn
            return start_piece(self.engine, self.session, parent, params, n, steering=self.steering(n))
        at = {"persona": self.persona_name(), "tracer": self.tracer, "on_fit": self._note_window}
        return start_replies(self.engine, self.session, parent_id, params, n, steering=self.steering(n), **at)

    def reply(self, parent_id: str, n: int = 1) -> list[Node]:
        """Sample n replies under parent_id (one streamed after its label), save them, move to the
        first: the one action both faces sample through (the Loom's g too)."""
        replies = self.start_reply(parent_id, n)
        head = ("…" if replies.piece_of else self._head(replies.speaker)) if n == 1 else None
        nodes = self._finish(replies, head)
        if nodes:
            self.session.goto(nodes[0].id)
        self.view.replied(nodes, replies)
        self._check_pipe()
        return nodes

    def continue_reply(self) -> Node:
        """Extend the current reply: a sibling holding the old text plus what the model adds."""
        node = self.cursor
        if node.role != "model":
            raise SimlabError("/continue needs a model reply under the cursor")
        self.session.check_writable()
        params = self.params.with_overrides(seed=self.seeds.take(1))
        replies = start_continuation(
            self.engine, self.session, node, params, on_fit=self._note_window, steering=self.steering()
        )
        head = self.view.head(node.role, node.speaker) + node.text
        added = self._finish(replies, head, keep=lambda c: bool(c.text.strip()))
        self._check_pipe()
        if not added:  # (a copy of the reply would be a sibling saying nothing new)
            ends = "the model adds nothing: it ends the reply again"
            why = "interrupted before the first token" if replies.run.interrupted else ends
            self.view.note(f"({why}; nothing saved)")
            return node
        self.session.goto(added[0].id)
        return added[0]

    def _finish(self, replies: Replies, head: str | None, keep=has_output) -> list[Node]:
        """Decode (streaming after head), save what came, and say what went wrong on the way."""
        self._stream(replies, head)
        return self.kept(replies, keep)

    def kept(self, replies: Replies, keep=has_output) -> list[Node]:
        """A decoded run's replies saved with their traces, its toolbar figures, a cut stream said."""
        nodes = replies.save(keep, on_trace_error=self._trace_failed)
        if replies.run.stats.generated_tokens:  # (a run stopped before its first token keeps the
            self.last = LastReply.of(replies)  # figures of the one before)
        if not nodes and replies.run.interrupted:  # and gives its seeds back: the next run takes them
            self.seeds.give_back(len(replies.run.completions))
        if getattr(replies.run, "problem", None):  # a server's stream cut mid-reply
            self.view.note(f"simlab: {replies.run.problem}")
        return nodes

    def _check_pipe(self) -> None:
        if self.broken_pipe:  # saved; now the reader is gone
            raise BrokenPipeError()

    def _stream(self, replies: Replies, head: str | None) -> None:
        """Decode, the view shown each delta. Ctrl-C, SIGTERM and SIGHUP (see cli.chat), interrupt()
        from another thread and output that cannot be written (a closed pipe or terminal) stop it:
        the partial reply is then saved as interrupted."""
        view = self.view

        def show(delta) -> bool:
            if not self.broken_pipe:
                try:
                    view.delta(delta, replies)
                except BrokenPipeError:
                    self.broken_pipe = True
            return self.stopping is not None or self.broken_pipe or self.cancel_requested

        outcome = "cut"
        self.running, replies.run.on_prefill = replies.run, view.reading
        try:
            view.begin(replies, head)
            self.interruptible = True
            try:
                replies.decode(show)
            finally:
                self.interruptible = False
            outcome = "ended"
        except KeyboardInterrupt:  # Ctrl-C while our code (not the engine's) held control
            replies.run.interrupt()
        except BrokenPipeError:
            replies.run.interrupt()
            self.broken_pipe = True
        except SimlabError:  # no reply (a server refused it): the view ends its line, the error follows
            outcome = "failed"
            raise
        finally:
            self.running = None
            if not self.broken_pipe:
                view.end(replies, outcome)

    def _head(self, speaker: str) -> str:
        """What a streamed reply is printed after: the label the prompt ends with (the model writes
        the space after it in simulator mode; in chat mode its text starts without one)."""
        framing = self.framing
        head = self.view.head("model", speaker, framing)
        return head.rstrip(" ") if framing.mode == "simulator" else head

    def fork(self, at: int, chosen: list[int], choice: str) -> Node:
        """The current reply branched at token `at`: `chosen` there, then the model writes on."""
        node = self.cursor
        self.session.check_writable()
        params = self.params.with_overrides(seed=self.seeds.take(1))
        replies = start_fork(
            self.engine, self.session, node, at, chosen, choice, params, self._note_window, self.steering()
        )
        [new] = self._finish(replies, self._head(node.speaker) + replies.forces.text, keep=lambda c: True)
        self.session.goto(new.id)
        self._check_pipe()
        return new

    def regen(self) -> list[Node]:
        """A new sibling of the current reply (or a first reply to the current user turn)."""
        return self.alternatives(1, "/regen")

    def alternatives(self, k: int, what: str = "/n") -> list[Node]:
        """k replies sampled as one batch, beside the current reply (or under the current turn)."""
        if k < 1 or k > 64:
            raise SimlabError(f"/n {k}: use a number from 1 to 64")
        node = self.cursor
        if node.role not in ("model", "user"):
            raise SimlabError(f"{what} needs a reply or a user turn under the cursor")
        return self.reply(node.parent if node.role == "model" else node.id, n=k)

    # -- the tree -----------------------------------------------------------------------------
    def move(self, where: str) -> Node:
        try:
            node = self.session.move(where)
        except TreeError as exc:
            raise SimlabError(str(exc)) from None
        self.view.turn(node)
        if node.role == "user" and not self._told_own_turn:  # (said once: what Enter and typing do here)
            self._told_own_turn = True
            self.view.note(
                "(at a turn of yours: Enter samples a reply to it; what you type is a 2nd turn of yours)"
            )
        return node

    def edit(self, text: str) -> Node:
        node = self.cursor
        if node.role not in ("model", "user"):
            raise SimlabError("/edit works on a reply or a user turn; move to one first")
        if text == node.text:
            raise SimlabError("/edit: the text is unchanged; nothing saved")
        new = self.session.edit(node.id, text)
        self.session.goto(new.id)
        self.view.turn(new)
        if new.role == "user":  # an edited question gets its answer, as a new turn would
            self.reply(new.id)
        return new

    def open_session(self, other: Session) -> None:
        """Go on in another session (the current one is closed), under its own persona and stops."""
        try:
            persona = persona_of(other)  # an empty session is refused before anything changes
        except SimlabError:
            other.close()
            raise
        self.session.close()
        self.session = other
        self.keeps_empty = True  # a session the user opened is never removed at the end
        self._watch(other)
        self.apply_persona(persona, stops_of(other, persona))

    def follow_root(self) -> None:
        """The cursor went to another tree of the session (another variant of a compare sweep, a
        /persona branch): sample as that tree's persona does, with its stops."""
        path = self.path()
        if not path or path[0].id == self._root:
            return
        self._root = path[0].id
        persona, stops = persona_at(path), framing_of(path).stops()
        if persona.name != self.persona.name or stops != self.params.stop:
            self.apply_persona(persona, stops)

    def apply_persona(self, persona: Persona, stops: tuple[str, ...]) -> None:
        """Sample as `persona` does (its defaults and stops), keeping only what the user set."""
        self.persona = persona
        self.params = persona.sampling_params(**{"stop": stops, **self.user_set}).with_overrides(seed=None)
        kept = ", ".join(f"{BY_FIELD[k].key if k in BY_FIELD else k}={v!r}" for k, v in self.user_set.items())
        self.view.note(
            f"persona {persona.name}: its sampling and stops apply"
            + (f"; kept yours: {kept}" if kept else "")
        )

    def remember(self) -> None:
        """Keep what the user chose (flags, /set, /seed) on the session: --resume goes on with it."""
        chosen = {k: list(v) if isinstance(v, tuple) else v for k, v in self.user_set.items()}
        seed = self.seeds.next
        kept = {"set": chosen, "seed": seed} if chosen or seed is not None else {}
        self.session.save_settings(kept | remembered(self))

    def close(self) -> None:
        self.remember()
        self.session.close()
