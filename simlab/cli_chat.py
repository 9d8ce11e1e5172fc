"""`simlab chat` (and bare `simlab`): open the REPL on a new or resumed session."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from simlab.cli_flags import add_sampling_overrides, overrides_of
from simlab.errors import SimlabError

LAST = "@last"


def add_command(commands, add_model_flags) -> None:
    chat = commands.add_parser("chat", help="talk with a simulated interlocutor (the default command)")
    chat.add_argument("--persona", "-p", help="persona name or YAML file (default: interview, or SIMLAB_PERSONA)")
    chat.add_argument("--resume", "-r", nargs="?", const=LAST, metavar="ID",
                      help="continue a saved session (default: the most recent one)")
    chat.add_argument("--session", help="name for a new session (default: the date and time)")
    chat.add_argument("--sessions-dir", help="the sessions folder (default ./sessions, or SIMLAB_SESSIONS)")
    chat.add_argument("--mode", choices=["simulator", "chat"],
                      help="simulator: continue the persona's transcript (base models, default); "
                           "chat: the model's chat template (instruct models)")
    group = chat.add_argument_group("sampling (default: the persona's)")
    add_sampling_overrides(group)
    group.add_argument("--seed", type=int, help="seed of the first reply; +1 for each reply after it")
    add_model_flags(chat)
    from simlab.trace_options import add_flags

    add_flags(chat)
    chat.set_defaults(run=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from simlab.config import load_settings, simlab_home
    from simlab.persona import find
    from simlab.store import SessionStore, SessionWriteError

    from simlab.cli import settings_flags

    settings = load_settings(**settings_flags(args))
    store = SessionStore(Path(args.sessions_dir or settings.sessions_dir))
    overrides = overrides_of(args) | ({"seed": args.seed} if args.seed is not None else {})
    # everything the user typed is checked before the model loads
    session = None
    if args.resume is not None:
        if args.persona or args.session or args.mode:
            raise SimlabError("simlab chat: --resume continues a session as it was; drop --persona/--session/"
                              "--mode (use /persona NAME inside to branch under another persona)")
        name = _last(store) if args.resume == LAST else args.resume
        try:
            session = store.open(name)
        except SessionWriteError:  # a read-only folder: read it, and go on in memory
            session = store.open(name, read_only=True)
            session.in_memory = True
        if session.tree.cursor is None and session.tree.roots:
            session.goto(session.tree.leaf(session.tree.roots[0].id).id)
        persona = _persona_of(session)
    else:
        persona = find(args.persona or settings.persona)
        if args.mode:
            persona = replace(persona, mode=args.mode)
        if args.session and store.exists(args.session):
            raise SimlabError(f"simlab chat: session {args.session!r} exists; resume it with --resume "
                              f"{args.session}, or pick another name")
        store.path(args.session or store.new_name())  # a bad name fails now
    from simlab.trace_options import config_from, make_tracer

    trace_config = config_from(args)
    tracer = make_tracer(trace_config, say=lambda m: print(m, file=sys.stderr))
    try:
        params = persona.sampling_params(stop=_stops(session, persona), **overrides)
        from simlab.models import classify_spec
        from simlab.repl.app import banner, run_interactive, run_script
        from simlab.repl.chat import Chat

        if session is not None:
            from simlab.backends import recorded_server

            settings = recorded_server(settings, session.tree.nodes.values(), args.backend)
        spec = _model_spec(args, settings, session)
        if settings.backend == "local":
            classify_spec(spec)  # a spec that names nothing fails now, not after the prompt is up
        elif tracer is not None:
            from simlab.remote import needs_local

            raise needs_local("--trace (the residual stream)")
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
        color = interactive and "NO_COLOR" not in os.environ
        if interactive:  # the prompt comes up at once; the model loads while the user types
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(1, thread_name_prefix="simlab-load")
            engine = pool.submit(_engine, args, settings, spec, quiet=True)
            pool.shutdown(wait=False)
        else:
            engine = _engine(args, settings, spec)
        if session is None:
            from simlab.conversation import start_session

            try:
                session = start_session(store, persona, args.session)
            except SessionWriteError:  # a full disk or read-only folder: chat anyway, in memory
                session = start_session(store, persona, args.session, in_memory=True)
        chat = Chat(engine, store, session, persona, params, out=sys.stdout, color=color, err=sys.stderr,
                    tracer=tracer)
        for problem in session.problems:
            chat.note(f"simlab: warning: {problem}")
        with _signals_end(chat):
            if interactive:
                code = run_interactive(chat, resumed=args.resume is not None, history=simlab_home() / "history",
                                       model=spec)
            else:
                banner(chat, args.resume is not None, sys.stderr)
                code = run_script(chat, sys.stdin)
        if session.unsaved:
            _rescue(session)
            return 1
        return code
    finally:
        if session is not None:
            session.close()
            typed = any(n.role == "user" for n in session.tree.nodes.values())
            if args.resume is None and not typed and not session.in_memory:
                store.remove(session.name)  # nothing was typed: do not leave an empty session behind


def _signals_end(chat):
    """SIGTERM and SIGHUP end the REPL like /quit: a reply being decoded stops and is saved as
    interrupted, then the session closes; the exit code is 128 + the signal."""
    from simlab.cli import on_end_signals

    def stop(signum, frame) -> None:
        chat.stopping = signum
        if chat.interruptible:  # never in the middle of saving a node
            raise KeyboardInterrupt

    return on_end_signals(stop)


def _rescue(session) -> None:
    """Write a session with changes the disk did not take where it can go, and say where."""
    import tempfile

    from simlab.config import simlab_home
    from simlab.store import SessionWriteError

    if session.safe_to_close:  # exported after its last change
        print(f"simlab: session {session.name!r} was not saved in {session.path.parent}; "
              "your last /export has all of it", file=sys.stderr)
        return
    name = f"{session.name}-rescued-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    for folder in (simlab_home() / "rescue", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = session.export(folder / name)
        except (OSError, SessionWriteError):
            continue
        print(f"simlab: {len(session.unsaved)} change(s) could not be saved in {session.path.parent}; the whole "
              f"session is in {path}; `simlab sessions import {path}` brings it back", file=sys.stderr)
        return
    print(f"simlab: {len(session.unsaved)} change(s) of session {session.name!r} could not be saved anywhere "
          "(the disk refused every write)", file=sys.stderr)


def _last(store) -> str:
    sessions = sorted(store.list(), key=lambda s: s.modified)
    if not sessions:
        raise SimlabError(f"no saved sessions in {store.folder} to resume; start one with `simlab chat`")
    return sessions[-1].name


def _persona_of(session):
    """The persona a session was started with: from the library if it is there, else rebuilt from the
    framing the session recorded (the rendering always follows the recorded framing)."""
    from simlab.persona import Persona, PersonaError, find
    from simlab.conversation import framing_of

    roots = session.tree.roots
    if not roots:
        raise SimlabError(f"session {session.name!r} is empty; start a new one with `simlab chat`")
    path = session.tree.path(session.tree.cursor) if session.tree.cursor else [roots[0]]
    root = path[0]
    framing = framing_of(path)
    try:
        if root.persona:
            return find(root.persona)
    except PersonaError:
        pass
    return Persona(name=root.persona or "session", frame=root.text if root.role == "frame" else "",
                   user=framing.user, model=framing.model, turn_template=framing.turn_template,
                   mode=framing.mode, stop=framing.stop)


def _stops(session, persona) -> tuple[str, ...]:
    if session is None or session.tree.cursor is None:
        return persona.stop_strings
    from simlab.conversation import framing_of

    return framing_of(session.tree.path(session.tree.cursor)).stops()


def _model_spec(args, settings, session) -> str:
    if args.model is None and session is not None:  # resume with the model that wrote the replies
        recorded = [n.model for n in session.tree.nodes.values() if n.model]
        if recorded:
            return recorded[-1]
    return args.model or settings.model


def _engine(args, settings, spec: str, quiet: bool = False):
    from simlab.backends import open_engine

    say = (lambda message: None) if quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    return open_engine(settings, spec, trust_remote_code=args.trust_remote_code, progress=say)
