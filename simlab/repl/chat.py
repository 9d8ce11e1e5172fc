"""The lab's state and what each REPL action does to it, with no terminal library in sight.

A `Chat` holds the engine, the open session (its cursor is where the user is in the tree), the
persona and the sampling settings. Every action writes what the user should see to `out`, and
every reply is saved as a node the moment it is complete, so nothing finished can be lost.
"""

from __future__ import annotations

import errno
import json
import os
import random
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from simlab.conversation import (Fitted, add_frame, add_reply, fit_prompt, framing_of, node_fields, reply_prompt,
                                 start_session)
from simlab.errors import SimlabError
from simlab.params import SamplingParams
from simlab.persona import Framing, Persona
from simlab.store import Session, SessionStore
from simlab.tree import Node, TreeError, render_path
from simlab.treeview import Style

if TYPE_CHECKING:  # the prompt comes up while the model (and torch) still load
    from simlab.engine import Engine, Run, RunStats


class ModelFailed(SimlabError):
    """The model loading in the background could not be loaded; the REPL cannot go on."""

SETTABLE = {"temperature": float, "top_k": int, "top_p": float, "min_p": float, "typical_p": float,
            "repetition_penalty": float, "max_tokens": int, "stop": str}


@dataclass
class LastReply:
    stats: RunStats
    tokens_per_second: float
    first_token_ms: float


class Chat:
    def __init__(self, engine: "Engine | Future", store: SessionStore, session: Session, persona: Persona,
                 params: SamplingParams, out: TextIO, color: bool = False, err: TextIO | None = None,
                 tracer=None):
        self._engine = None
        self._loading = engine if isinstance(engine, Future) else None
        if self._loading is None:
            self._engine = engine
        self.store = store
        self.session = session
        self.persona = persona
        self.params = params.with_overrides(seed=None)
        self.seed = params.seed  # the next reply's seed (then +1 per reply); None: a fresh random one
        self.out = out
        self.err = err or out
        self.style = Style(color)
        self.last: LastReply | None = None
        self.batch: list[str] = []  # ids of the last /n alternatives, for /pick
        self.tracer = tracer  # a trace.Tracer while the residual stream is recorded
        self._window_noted = False  # the context window note is shown once
        self._save_failing = False
        self.broken_pipe = False  # stdout was closed under a reply: the reply is saved, then the REPL ends
        self.stopping: int | None = None  # the signal (SIGTERM, SIGHUP) that asked the REPL to end
        self.interruptible = False  # True while a signal may cut in (at the prompt, while decoding)
        self._watch(session)
        if self._engine is not None:
            self._first_use_notes()

    @classmethod
    def new(cls, engine: Engine, store: SessionStore, persona: Persona, params: SamplingParams, out: TextIO,
            **kwargs) -> "Chat":
        return cls(engine, store, start_session(store, persona), persona, params, out, **kwargs)

    @property
    def engine(self) -> "Engine":
        """The engine; while it loads in the background, the first use waits for it."""
        if self._engine is None:
            if not self._loading.done():
                self.note("(the model is still loading; the reply starts when it is ready)")
            self.interruptible = True
            try:
                self._engine = self._loading.result()
            except SimlabError as exc:
                raise ModelFailed(str(exc)) from None
            finally:
                self.interruptible = False
            self._first_use_notes()
        return self._engine

    def _first_use_notes(self) -> None:
        tokenizer = self._engine.tokenizer
        if self.framing.mode == "simulator" and getattr(tokenizer, "chat_template", None):
            self.note(f"note: {self._engine.info.name} has a chat template; --mode chat (or `mode: chat` in a "
                      "persona) uses it instead of the simulator transcript")

    @property
    def engine_ready(self) -> bool:
        return self._engine is not None or (self._loading.done() and self._loading.exception() is None)

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
        return framing_of(path) if path else Framing.of(self.persona)

    def position(self) -> tuple[int, int, int]:
        """(depth, sibling index from 1, number of siblings) of the cursor."""
        node = self.cursor
        siblings = self.tree.siblings(node.id)
        ids = [s.id for s in siblings]
        return len(self.path()) - 1, (ids.index(node.id) + 1 if node.id in ids else 1), len(siblings)

    # -- saving -------------------------------------------------------------------------------
    def _watch(self, session: Session) -> None:
        session.on_save_problem = self._save_problem
        if session.in_memory:
            self.note(f"simlab: the sessions folder {self.store.folder} cannot take session {session.name!r}; "
                      "the conversation is kept in memory: /export jsonl FILE writes it elsewhere")

    def _save_problem(self, message: str) -> None:
        """The session's file refused a write (or took the backlog again): say so once per change of state."""
        saved_again = not self.session.unsaved
        if saved_again:
            self._save_failing = False
            self.note(f"simlab: {message}")
        elif not self._save_failing:
            self._save_failing = True
            self.note(f"simlab: {message}; the conversation goes on in memory and is written when the disk "
                      "takes it again; /export jsonl FILE writes the whole session elsewhere now")

    def export(self, fmt: str, target: str) -> None:
        """The session (md: the current path) written to a file, or printed."""
        from pathlib import Path

        from simlab.exchange import to_loom, to_markdown, to_yaml

        if fmt == "jsonl":
            if not target:
                raise SimlabError("usage: /export jsonl FILE (a session file: `simlab sessions import FILE`)")
            path = self.session.export(Path(target))
            self.note(f"wrote {path} ({len(self.tree.nodes)} nodes; `simlab sessions import {path}` opens it)")
            return
        writers = {"md": lambda: to_markdown(self.session), "yaml": lambda: to_yaml(self.session),
                   "loom": lambda: json.dumps(to_loom(self.session), ensure_ascii=False, indent=1)}
        if fmt not in writers:
            raise SimlabError("usage: /export md|yaml|loom|jsonl [FILE]")
        text = writers[fmt]()
        if not target:
            self.say(text)
            return
        path = Path(target).expanduser()
        try:
            path.write_text(text, encoding="utf-8")
        except (OSError, ValueError) as exc:
            raise SimlabError(f"/export: cannot write {path}: {getattr(exc, 'strerror', None) or exc}") from None
        if fmt != "md":
            self.session.exported_changes = len(self.session.unsaved)
        self.note(f"wrote {path}")

    # -- output -------------------------------------------------------------------------------
    def say(self, text: str = "") -> None:
        _write(self.out, text + "\n")

    def note(self, text: str) -> None:
        _write(self.err, self.style.dim(text) + "\n")

    def show_turn(self, node: Node) -> None:
        """A node as the transcript shows it, with its place among its siblings."""
        if node.role == "frame":
            self.say(self.style.dim(node.text.rstrip("\n")))
            return
        siblings = self.tree.siblings(node.id)
        where = ""
        if len(siblings) > 1:
            where = self.style.dim(f" [{[s.id for s in siblings].index(node.id) + 1}/{len(siblings)}]")
        self.say(self._label(node) + " " + node.text + where)

    def _label(self, node: Node) -> str:
        code = "1;32" if node.role == "model" else "1;34"
        return self.style.wrap(code, f"{node.speaker or node.role}:")

    def show_path(self, last: int | None = None) -> None:
        path = self.path()
        for node in path[-last:] if last else path:
            self.show_turn(node)

    # -- turns and replies --------------------------------------------------------------------
    def user_turn(self, text: str) -> list[Node]:
        """Add the user's turn under the cursor and stream the model's reply to it."""
        if not text.strip():
            return []
        user = self.session.add_child(self.tree.cursor, "user", text, speaker=self.framing.user,
                                      persona=self._persona_name())
        self.session.goto(user.id)
        return self.reply(user.id)

    def reply(self, parent_id: str, n: int = 1) -> list[Node]:
        """Sample n replies under parent_id (streamed when n == 1), save them, move to the first."""
        path = self.tree.path(parent_id)
        framing = framing_of(path)
        speaker = framing.model
        params = self._next_params(n)
        recorder = self.tracer.recorder(self.engine) if self.tracer else None
        fit = self._fit(path, speaker, params.max_new_tokens)
        run = self.engine.start(fit.prompt, params, n=n, recorder=recorder)
        self._stream(run, self._head(speaker) if n == 1 else None)
        nodes = []
        for completion in run.completions:
            if not completion.tokens and not completion.text:
                continue  # interrupted before its first token: nothing to keep
            nodes.append(add_reply(self.session, parent_id, completion, params, self.engine, framing, speaker,
                                   persona=self._persona_name(), window=fit.window))
            if recorder is not None:
                self._save_trace(recorder, run, completion, nodes[-1])
        self._remember(run)
        if getattr(run, "problem", None):  # a server's stream cut mid-reply
            self.note(f"simlab: {run.problem}")
        if self.broken_pipe:  # saved; now the reader is gone
            raise BrokenPipeError()
        if not nodes:
            self.note("(interrupted before the first token; nothing saved)")
            return []
        self.session.goto(nodes[0].id)
        self.batch = [node.id for node in nodes] if n > 1 else []
        if n > 1:
            for i, node in enumerate(nodes, 1):
                self.say(self.style.wrap("1", f"[{i}]") + " " + self._label(node) + " " + node.text +
                         self.style.dim(f"  (seed {node.seed}, {node.finish_reason})"))
            self.note(f"{len(nodes)} alternatives saved; at [1]. /pick I to take another, /next /prev to step.")
        elif nodes[0].finish_reason == "interrupted":
            self.note("(interrupted: the partial reply is saved)")
        return nodes

    def _fit(self, path: list[Node], speaker: str, max_new_tokens: int) -> Fitted:
        """The reply's prompt; the first time older turns are left out, say so."""
        fit = fit_prompt(path, speaker, self.engine, max_new_tokens)
        if fit.window and not self._window_noted:
            self._window_noted = True
            kept = sum(1 for node in fit.path if node.role in ("user", "model"))
            turns = "turn" if kept == 1 else f"{kept} turns"
            self.note(f"(the conversation is longer than {self.engine.info.name}'s context of "
                      f"{self.engine.info.context_length} tokens: the model now reads the frame and the last "
                      f"{turns}; the session keeps them all, and each reply records its window)")
        return fit

    def _stream(self, run: Run, head: str | None) -> None:
        """Decode the run; with a head, print it and then the text as it comes. Ctrl-C, SIGTERM and
        SIGHUP (see cli_chat) interrupt it; so does output that cannot be written (a closed pipe or
        terminal): the partial reply is then saved as interrupted."""
        try:
            if head is not None:
                _write(self.out, head)
            self.interruptible = True
            try:
                for delta in run:
                    if self.stopping is not None:
                        run.interrupt()
                    if head is not None and delta.text:
                        _write(self.out, delta.text)
            finally:
                self.interruptible = False
            if head is not None:
                _write(self.out, "\n")
        except KeyboardInterrupt:  # Ctrl-C while our loop (not the engine's) held control
            run.interrupt()
        except BrokenPipeError:
            run.interrupt()
            self.broken_pipe = True

    def _head(self, speaker: str) -> str:
        framing = self.framing
        label = framing.label("model", speaker) if framing.mode == "simulator" else f"{speaker}:"
        return self.style.wrap("1;32", label) if label else ""

    def _save_trace(self, recorder, run: Run, completion, node: Node) -> None:
        try:
            self.tracer.save_node(self.session, node.id, recorder, run, completion)
        except OSError as exc:
            self.note(f"simlab: could not save the trace of {node.id[:8]}: {exc.strerror}; the reply is saved")

    def set_trace(self, value: str) -> None:
        from simlab.trace import Tracer
        from simlab.trace_options import TraceConfig

        if value not in ("on", "off", ""):
            raise SimlabError("usage: /trace on|off")
        if value == "off":
            self.tracer = None
        elif value == "on" and self.tracer is None:
            if self.engine.model is None:
                from simlab.remote import needs_local

                raise needs_local("/trace (the residual stream)")
            self.tracer = Tracer(TraceConfig(), say=self.note)
        state = "on" if self.tracer else "off"
        where = f" (files in {self.session.path.name[:-6]}.traces/)" if self.tracer else ""
        self.note(f"trace {state}{where}")

    def _next_params(self, n: int) -> SamplingParams:
        seed = self.seed if self.seed is not None else random.randrange(2**31)
        if self.seed is not None:
            self.seed += n
        return self.params.with_overrides(seed=seed)

    def _remember(self, run: Run) -> None:
        stats = run.stats
        self.last = LastReply(stats, stats.tokens_per_second, stats.first_token_seconds * 1000)

    def _persona_name(self) -> str | None:
        path = self.path()
        return path[0].persona if path else self.persona.name

    def regen(self) -> list[Node]:
        """A new sibling of the current reply (or a first reply to the current user turn)."""
        node = self.cursor
        if node.role == "model":
            return self.reply(node.parent)
        if node.role == "user":
            return self.reply(node.id)
        raise SimlabError("/regen needs a reply or a user turn under the cursor")

    def alternatives(self, k: int) -> list[Node]:
        """k replies sampled as one batch, beside the current reply (or under the current turn)."""
        if k < 1 or k > 64:
            raise SimlabError(f"/n {k}: use a number from 1 to 64")
        node = self.cursor
        parent = node.parent if node.role == "model" else node.id
        if node.role not in ("model", "user"):
            raise SimlabError("/n needs a reply or a user turn under the cursor")
        return self.reply(parent, n=k)

    def pick(self, i: int) -> Node:
        choices = self.batch or [s.id for s in self.tree.siblings(self.cursor.id)]
        if not 1 <= i <= len(choices):
            raise SimlabError(f"/pick {i}: choose 1 to {len(choices)}")
        node = self.session.goto(choices[i - 1])
        self.show_turn(node)
        return node

    def continue_reply(self) -> Node:
        """Extend the current reply: a sibling holding the old text plus what the model adds."""
        node = self.cursor
        if node.role != "model":
            raise SimlabError("/continue needs a model reply under the cursor")
        path = self.tree.path(node.parent)
        framing = framing_of(path)
        params = self._next_params(1)
        tokenizer = self.engine.tokenizer
        written = tokenizer.encode(node.text, add_special_tokens=False) if tokenizer is not None else []
        fit = self._fit(path, node.speaker, params.max_new_tokens + len(written))
        prompt = reply_prompt(fit.path, node.speaker, tokenizer)
        prompt = prompt + framing.lead() + node.text if isinstance(prompt, str) else prompt + written
        run = self.engine.start(prompt, params)
        self._stream(run, self._label(node) + " " + node.text)
        [c] = run.completions
        self._remember(run)
        fields = node_fields(c, params, self.engine, fit.window)
        # Two samplings joined: the tokens and log-probabilities are the continuation's, and without
        # one (params, seed) that draws the whole text, replay copies it rather than re-sampling it.
        fields.update(params=None, seed=None)
        new = self.session.add_child(node.parent, "model", (node.text + c.text).rstrip(), speaker=node.speaker,
                                     origin="sampled", persona=node.persona, edited_from=node.id,
                                     tags=frozenset({"continued"}), **fields)
        self.session.goto(new.id)
        if self.broken_pipe:
            raise BrokenPipeError()
        return new

    # -- the tree -----------------------------------------------------------------------------
    def move(self, where: str) -> Node:
        try:
            node = self.session.move(where)
        except TreeError as exc:
            raise SimlabError(str(exc)) from None
        self.show_turn(node)
        return node

    def goto(self, prefix: str) -> Node:
        node = self.session.goto(self.tree.resolve(prefix).id)
        self.batch = []
        self.show_path(last=3)
        return node

    def edit(self, text: str) -> Node:
        node = self.cursor
        if node.role not in ("model", "user"):
            raise SimlabError("/edit works on a reply or a user turn; move to one first")
        if text == node.text:
            raise SimlabError("/edit: the text is unchanged; nothing saved")
        new = self.session.edit(node.id, text)
        self.session.goto(new.id)
        self.show_turn(new)
        return new

    def bookmark(self) -> bool:
        node = self.cursor
        on = "bookmark" not in node.tags
        self.session.set_tag(node.id, "bookmark", on)
        self.note(f"{'bookmarked' if on else 'bookmark removed from'} {node.id[:8]}")
        return on

    def switch_persona(self, persona: Persona) -> list[Node]:
        """This path's user turns replayed under another persona, as a new branch (a new root)."""
        from simlab.replay import replay_branch

        turns = [n for n in self.path() if n.role == "user"]
        self.persona = persona
        if not turns:
            start = add_frame(self.session, persona)
            self.session.goto(start.id)
            self.show_path()
            return [start]
        self.note(f"replaying {len(turns)} user turn(s) under {persona.name} ...")
        added = replay_branch(self.engine, self.session, self.path(), {}, persona=persona, tracer=self.tracer)
        self.show_path()
        return added

    def load(self, name: str) -> None:
        if not self.session.safe_to_close:
            raise SimlabError(f"/load: session {self.session.name!r} has {len(self.session.unsaved)} change(s) "
                              "not on disk; /export jsonl FILE first")
        other = self.store.open(name)
        self.session.close()
        self.session = other
        self._watch(other)
        for problem in other.problems:
            self.note(f"warning: {problem}")
        self.batch = []
        self.show_path()

    # -- settings -----------------------------------------------------------------------------
    def set(self, key: str, value: str) -> None:
        key = key.replace("-", "_")
        if key in ("max_new_tokens",):
            key = "max_tokens"
        if key not in SETTABLE:
            raise SimlabError(f"/set {key}: unknown setting; use one of {', '.join(SETTABLE)}")
        if key == "stop":
            stops = self.framing.stops() if value == "default" else tuple(
                s.encode().decode("unicode_escape") for s in value.split("|") if s)
            self.params = self.params.with_overrides(stop=stops)
            self.note(f"stop = {list(stops)}")
            return
        try:
            number = SETTABLE[key](value)
        except ValueError:
            raise SimlabError(f"/set {key} {value}: not a {SETTABLE[key].__name__}") from None
        field = "max_new_tokens" if key == "max_tokens" else key
        self.params = self.params.with_overrides(**{field: number})
        self.note(f"{key} = {number}")

    def set_seed(self, value: str) -> None:
        if value in ("random", "none", "off"):
            self.seed = None
            self.note("seed: a fresh random seed for each reply")
            return
        try:
            seed = int(value)
        except ValueError:
            raise SimlabError(f"/seed {value}: give a whole number, or 'random'") from None
        self.params.with_overrides(seed=seed)  # validates the range
        self.seed = seed
        self.note(f"seed = {seed} (the next reply; then +1 per reply)")

    def transcript(self) -> str:
        return render_path(self.path())

    def close(self) -> None:
        self.session.close()


def pick_editor() -> str | None:
    return os.environ.get("VISUAL") or os.environ.get("EDITOR")


def _write(stream: TextIO, text: str) -> None:
    """Write and flush; a terminal that hung up (EIO) is ignored: what matters then is saving."""
    try:
        stream.write(text)
        stream.flush()
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise


def edit_in_editor(text: str) -> str:
    """Edit text in $VISUAL/$EDITOR; returns the saved text without its final newline."""
    import shlex
    import subprocess
    import tempfile

    editor = pick_editor()
    with tempfile.NamedTemporaryFile("w+", suffix=".txt", delete=False, encoding="utf-8") as handle:
        handle.write(text)
        name = handle.name
    try:
        result = subprocess.run([*shlex.split(editor), name])
        if result.returncode != 0:
            raise SimlabError(f"the editor {editor!r} exited with {result.returncode}; nothing saved")
        with open(name, encoding="utf-8") as handle:
            edited = handle.read()
    finally:
        os.unlink(name)
    return edited[:-1] if edited.endswith("\n") else edited
