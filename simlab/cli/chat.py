"""`simlab chat` (and bare `simlab`): open the REPL on a new or resumed session."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from simlab.cli.common import (
    add_session_flags,
    add_sessions_dir,
    color_on,
    load_engine,
    make_tracer,
    on_end_signals,
    open_store,
    refuse_idle_flags,
    sampling_overrides,
    say,
    settings_flags,
    trace_config,
)
from simlab.config import load_settings, simlab_home
from simlab.engine.open import recorded_server
from simlab.engine.params import BY_FIELD, SamplingParams
from simlab.errors import SessionWriteError, SimlabError, SteerError, needs_local
from simlab.models.load import EMBEDDED, classify_spec
from simlab.persona.library import find
from simlab.persona.schema import Persona
from simlab.repl.app import banner, farewell, run_interactive, run_script
from simlab.repl.loading import Loading, Status
from simlab.repl.loom_app import run_loom
from simlab.repl.screen import LineView
from simlab.repl.state import Chat
from simlab.session.started import discarded, persona_of, stops_of
from simlab.session.store import Session, SessionStore
from simlab.steer.use import no_server, uses_of
from simlab.trace.files import remove_session
from simlab.turns import start_session

LAST = "@last"


def add_command(commands) -> None:
    chat = commands.add_parser("chat", help="talk with a simulated interlocutor (the default command)")
    chat.add_argument(
        "--persona", "-p", help="persona name or YAML file (default: interview, or SIMLAB_PERSONA)"
    )
    chat.add_argument(
        "--resume",
        "-r",
        nargs="?",
        const=LAST,
        metavar="ID",
        help="continue a saved session (default: the most recent one)",
    )
    chat.add_argument("--session", help="name for a new session (default: the date and time)")
    add_read_only(chat, "--resume")
    add_sessions_dir(chat)
    chat.add_argument(
        "--mode",
        choices=["simulator", "chat"],
        help="simulator: continue the persona's transcript (base models, default); "
        "chat: the model's chat template (instruct models)",
    )
    add_session_flags(chat, seed_help="seed of the first reply; +1 for each reply after it")
    chat.set_defaults(run=cmd_chat)


def add_read_only(parser, needs: str) -> None:
    parser.add_argument(
        "--read-only",
        action="store_true",
        help=f"with {needs}: browse the session, read /tokens, export it; nothing is written to it "
        "(so it opens while another simlab writes it)",
    )


def cmd_chat(args: argparse.Namespace) -> int:
    settings = load_settings(**settings_flags(args))
    store = open_store(args, settings)
    # everything the user typed is checked before the model loads
    session = _resumed(args, store) if args.resume is not None or args.read_only else None
    persona = persona_of(session) if session is not None else _new_persona(args, settings, store)
    tracer = make_tracer(trace_config(args))
    steer_uses, steer_positions = _steer(args, session, settings.backend, persona)
    chosen = _chosen(args, session)
    try:
        params = persona.sampling_params(**{"stop": stops_of(session, persona), **chosen})
        if session is not None:
            settings = recorded_server(settings, session.tree.nodes.values(), args.backend)
            settings = _recorded_weights(args, settings, session)
        refuse_idle_flags(args, settings)
        spec = _model_spec(args, settings, session)
        if settings.backend == "local":
            classify_spec(spec)  # a spec that names nothing fails now, not after the prompt is up
        elif tracer is not None:
            raise needs_local("--trace (the residual stream)")
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
        chat_mode = persona.mode == "chat" and settings.backend == "local"
        engine = _start_engine(args, settings, spec, background=interactive and not chat_mode)
        if chat_mode:
            _needs_template(engine, args)
        if session is None:
            session = _new_session(store, persona, args.session)
        chat = Chat(
            engine,
            store,
            session,
            persona,
            params,
            LineView(sys.stdout, sys.stderr, color=interactive and color_on()),
            tracer=tracer,
            user_set={k: v for k, v in chosen.items() if k != "seed"},
        )
        chat.steer_uses, chat.steer_positions = steer_uses, steer_positions
        if session.read_only:
            chat.view.note(
                f"session {session.name!r} is open read-only: browse it, /tokens, /export; "
                "nothing is written to it"
            )
        if args.resume is not None and session.tree.settings and not getattr(args, "loom", False):
            kept = ", ".join(
                f"{BY_FIELD[k].key if k in BY_FIELD else k}={v!r}" for k, v in chosen.items() if v is not None
            )
            chat.view.note(f"your settings go on: {kept} (a flag, /set or /seed changes them)")
        shown = spec if settings.backend == "local" else f"{_served(spec)} at {settings.base_url}"
        return _run(chat, args, interactive, shown)
    finally:
        if session is not None:
            _close(args, store, session)


def _steer(args: argparse.Namespace, session: Session | None, backend: str, persona) -> tuple[list, str]:
    """The vectors replies are steered with: --steer's, else what a resumed session had on (said;
    a vector no longer in the library is said and left off), else a new session's persona's `steer:`
    (said). Read now; checked against the model when it is there. A server cannot be steered:
    refused now (a persona's steering is said and left off)."""
    if args.steer and backend != "local":
        raise no_server()
    if not args.steer and session is None and persona.steer:
        if backend != "local":
            steer = ", ".join(persona.steer)
            say(f"simlab: {persona.name}'s steer: {steer} is left off: a server cannot be steered")
            return [], "all"
        uses = uses_of(list(persona.steer))
        say(
            f"steering goes on: {' + '.join(u.label() for u in uses)} ({persona.name}'s; /steer off stops it)"
        )
        return uses, args.steer_positions
    if args.steer or session is None or not session.tree.settings.get("steer"):
        return uses_of(args.steer), args.steer_positions
    recorded = session.tree.settings
    try:
        uses = uses_of([str(spec) for spec in recorded["steer"]])
    except SteerError as exc:
        steered = ", ".join(map(str, recorded["steer"]))
        say(f"simlab: the session was steered with {steered}: {exc}; not steered now")
        return [], "all"
    positions = str(recorded.get("steer_positions", "all"))
    say(f"steering goes on: {' + '.join(u.label() for u in uses)} (/steer off stops it)")
    return uses, positions


def _chosen(args: argparse.Namespace, session: Session | None) -> dict:
    """What the user chose: a resumed session's /set and /seed, then the flags on top."""
    chosen = {}
    recorded = session.tree.settings if session is not None else {}
    if recorded:
        try:
            chosen = {k: tuple(v) if k == "stop" else v for k, v in dict(recorded.get("set") or {}).items()}
            chosen["seed"] = recorded.get("seed")
            SamplingParams(**chosen)
        except (SimlabError, TypeError, ValueError):
            say(f"simlab: warning: session {session.name!r} holds unusable settings {recorded}; ignored")
            chosen = {}
    chosen |= sampling_overrides(args)
    if args.seed is not None:
        chosen["seed"] = args.seed
    return chosen


def _needs_template(engine, args: argparse.Namespace) -> None:
    """Chat mode renders turns with the model's chat template: a model without one fails now."""
    if not getattr(engine.tokenizer, "chat_template", None):
        how = "--mode chat" if args.mode == "chat" else "this persona's `mode: chat`"
        raise SimlabError(
            f"simlab chat: {how} needs a model with a chat template, and {engine.info.name} has none; "
            "drop it (simulator mode continues the transcript, for base models) or pick an instruct "
            "model with --model"
        )


def _resumed(args: argparse.Namespace, store: SessionStore) -> Session:
    if args.read_only and args.resume is None:
        raise SimlabError("simlab chat: --read-only opens a saved session: add --resume NAME")
    if args.persona or args.session or args.mode:
        raise SimlabError(
            "simlab chat: --resume continues a session as it was; drop --persona/--session/"
            "--mode (use /persona NAME inside to branch under another persona)"
        )
    name = _last(store) if args.resume == LAST else args.resume
    if args.read_only:
        return _at_its_cursor(store.open(name, read_only=True))
    try:
        session = store.open(name)
    except SessionWriteError:  # a read-only folder: read it, and go on in memory
        session = store.open(name, read_only=True)
        session.in_memory = True
    return _at_its_cursor(session)


def _at_its_cursor(session: Session) -> Session:
    if session.tree.cursor is None and session.tree.roots:
        session.goto(session.tree.leaf(session.tree.roots[0].id).id)
    return session


def _new_persona(args: argparse.Namespace, settings, store: SessionStore) -> Persona:
    if getattr(args, "loom", False) and not args.persona:  # a new document: its text, or empty
        persona = Persona(name="document", frame=args.text or "", mode="document")
    else:
        persona = find(args.persona or settings.persona)
    if args.mode:
        persona = replace(persona, mode=args.mode)
    if args.session and store.exists(args.session):
        raise SimlabError(
            f"simlab chat: session {args.session!r} exists; resume it with --resume "
            f"{args.session}, or pick another name"
        )
    store.path(args.session or store.new_name())  # a bad name fails now
    return persona


def _start_engine(args: argparse.Namespace, settings, spec: str, background: bool):
    """The engine; in a terminal it loads in the background, so the prompt comes up at once."""
    if not background:
        return load_engine(args, settings, spec)
    pool = ThreadPoolExecutor(1, thread_name_prefix="simlab-load")
    status = Status()  # (its steps go to the status line, never under the prompt or the editor)
    engine = pool.submit(_load_and_probe, args, settings, spec, status)
    pool.shutdown(wait=False)
    return Loading(engine, status)


def _load_and_probe(args: argparse.Namespace, settings, spec: str, status):
    """The engine; a server's also probed here, in the background, where a new session would
    otherwise wait for it after its first reply (a resumed one has its map already)."""
    engine = load_engine(args, settings, spec, progress=status)
    if not engine.capabilities.local and getattr(args, "resume", None) is None:
        from simlab.turns.servers import server_map

        status("probing what the server does (once; simlab doctor shows it)")
        server_map(engine)
    return engine


def _served(spec: str) -> str:
    return "the server's model" if spec == EMBEDDED else spec


def _new_session(store: SessionStore, persona: Persona, name: str | None) -> Session:
    try:
        return start_session(store, persona, name)
    except SessionWriteError:  # a full disk or read-only folder: chat anyway, in memory
        return start_session(store, persona, name, in_memory=True)


def _run(chat: Chat, args: argparse.Namespace, interactive: bool, spec: str) -> int:
    chat.keeps_empty = _keeps(args)
    for problem in chat.session.problems:
        chat.view.note(f"simlab: warning: {problem}")
    with _signals_end(chat):
        if interactive and getattr(args, "loom", False):
            run_loom(chat, children=args.children)
            code = farewell(chat, reopen="loom")
        elif interactive:
            code = run_interactive(
                chat, resumed=args.resume is not None, history=simlab_home() / "history", model=spec
            )
        else:
            banner(chat, args.resume is not None)
            code = run_script(chat, sys.stdin)
    chat.remember()
    if chat.session.unsaved:
        _rescue(chat.session)
        return 1
    return code


def _keeps(args: argparse.Namespace) -> bool:
    """A session resumed or named is kept even when nothing happened in it."""
    return args.resume is not None or args.session is not None


def _close(args: argparse.Namespace, store: SessionStore, session: Session) -> None:
    session.close()
    if discarded(session, keep=_keeps(args)):
        remove_session(store, session.name)  # nothing but its frame: do not leave an empty session behind


def _signals_end(chat: Chat):
    """SIGTERM and SIGHUP end the REPL like /quit: a reply being decoded stops and is saved as
    interrupted, then the session closes; the exit code is 128 + the signal."""

    def stop(signum, frame) -> None:
        chat.stopping = signum
        if chat.exit_app is not None:  # the prompt or the loom: it exits at its loop's next turn
            chat.exit_app()
        elif chat.interruptible:  # never in the middle of saving a node
            raise KeyboardInterrupt

    return on_end_signals(stop)


def _rescue(session: Session) -> None:
    """Write a session with changes the disk did not take where it can go, and say where."""
    if session.safe_to_close:  # exported after its last change
        say(
            f"simlab: session {session.name!r} was not saved in {session.path.parent}; "
            "your last /export has all of it"
        )
        return
    name = f"{session.name}-rescued-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    for folder in (simlab_home() / "rescue", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = session.export(folder / name)
        except (OSError, SessionWriteError):
            continue
        say(
            f"simlab: {len(session.unsaved)} change(s) could not be saved in {session.path.parent}; "
            f"the whole session is in {path}; `simlab sessions import {path}` brings it back"
        )
        return
    say(
        f"simlab: {len(session.unsaved)} change(s) of session {session.name!r} could not be saved anywhere "
        "(the disk refused every write)"
    )


def _last(store: SessionStore) -> str:
    sessions = sorted(store.list(), key=lambda s: s.modified)
    if not sessions:
        raise SimlabError(f"no saved sessions in {store.folder} to resume; start one with `simlab chat`")
    return sessions[-1].name


def _recorded_weights(args: argparse.Namespace, settings, session: Session):
    """A resumed session samples with the weights its last reply was sampled with (gguf-a8 and gguf
    draw apart), unless --weights says otherwise."""
    if args.weights is not None or settings.backend != "local":
        return settings
    recorded = [n.weights for n in session.tree.nodes.values() if n.weights and n.params is not None]
    return replace(settings, weights=recorded[-1]) if recorded else settings


def _model_spec(args: argparse.Namespace, settings, session: Session | None) -> str:
    if args.model is None and session is not None:  # resume with the model that wrote the replies
        # replies simlab sampled (an imported Loom node names its API model, e.g. "davinci": not a spec)
        recorded = [n.model for n in session.tree.nodes.values() if n.model and n.params is not None]
        if recorded:
            return recorded[-1]
    return args.model or settings.model
