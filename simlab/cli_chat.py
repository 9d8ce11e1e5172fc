"""`simlab chat` (and bare `simlab`): open the REPL on a new or resumed session."""

from __future__ import annotations

import argparse
import os
import sys
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
    from simlab.store import SessionStore

    settings = load_settings(model=args.model, device=args.device, dtype=args.dtype, offline=args.offline,
                             allow_pickle=args.allow_pickle)
    store = SessionStore(Path(args.sessions_dir or settings.sessions_dir))
    overrides = overrides_of(args) | ({"seed": args.seed} if args.seed is not None else {})
    # everything the user typed is checked before the model loads
    session = None
    if args.resume is not None:
        if args.persona or args.session or args.mode:
            raise SimlabError("simlab chat: --resume continues a session as it was; drop --persona/--session/"
                              "--mode (use /persona NAME inside to branch under another persona)")
        session = store.open(_last(store) if args.resume == LAST else args.resume)
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

        spec = _model_spec(args, settings, session)
        classify_spec(spec)  # a spec that names nothing fails now, not after the prompt is up
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

            session = start_session(store, persona, args.session)
        chat = Chat(engine, store, session, persona, params, out=sys.stdout, color=color, err=sys.stderr,
                    tracer=tracer)
        for problem in session.problems:
            chat.note(f"simlab: warning: {problem}")
        if interactive:
            return run_interactive(chat, resumed=args.resume is not None, history=simlab_home() / "history",
                                   model=spec)
        banner(chat, args.resume is not None, sys.stderr)
        return run_script(chat, sys.stdin)
    finally:
        if session is not None:
            session.close()
            if args.resume is None and not any(n.role == "user" for n in session.tree.nodes.values()):
                store.remove(session.name)  # nothing was typed: do not leave an empty session behind


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
    from simlab.engine import Engine
    from simlab.models import load_model

    say = (lambda message: None) if quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    return Engine(load_model(spec, settings, trust_remote_code=args.trust_remote_code, progress=say))
