"""`simlab loom --grow`: the adaptive autoloom (turns.autoloom) without the editor: a saved document
(from its cursor) or a new one grown by itself, each node printed as it is saved; Ctrl-C stops it."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from dataclasses import replace

from simlab.cli.common import load_engine, open_store, sampling_overrides, say, warn
from simlab.engine.params import SeedCounter
from simlab.errors import EXIT_INTERRUPTED, SimlabError
from simlab.persona.library import find
from simlab.persona.schema import Persona
from simlab.session.started import persona_at
from simlab.turns import start_session
from simlab.turns.autoloom import MODES, Knobs, check_document

FLAGS = {  # flag -> knob (simlab loom's --children is the knob `children`)
    "p_threshold": "a token at a fork is a branch from this probability on (forks; default 0.1)",
    "conf_threshold": "cut a node before a token drawn where the likeliest is below this (default 0.3)",
    "min_tokens": "tokens a node has before it may be cut (default 4)",
    "max_depth": "levels of nodes below the start (default 3)",
    "budget": "tokens sampled in all (default 400)",
    "prune": "a branch below this probability from the start grows no further (default 0)",
}


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--grow: the autoloom (default: the session's /set knobs)")
    group.add_argument("--grow", action="store_true", help="grow the document by itself, no editor")
    for name, text in FLAGS.items():
        kind = int if name in ("min_tokens", "max_depth", "budget") else float
        group.add_argument(f"--{name.replace('_', '-')}", type=kind, help=text)
    group.add_argument(
        "--fork-mode", choices=MODES, help="forks: the likeliest tokens; sampled: seeded samples"
    )


def cmd_grow(args: argparse.Namespace) -> int:
    if args.steer or args.trace:
        flag = "--steer" if args.steer else "--trace"
        raise SimlabError(f"loom --grow: {flag} does not reach the autoloom yet; grow without it")
    changes = {k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None}
    changes |= {"mode": args.fork_mode} if args.fork_mode else {}
    if args.children_given:
        changes["children"] = args.children
    Knobs(**changes)  # (bad values fail before the model loads)
    store = open_store(args)
    engine = None
    if args.name is not None:
        session = store.open(args.name)
        warn(session.problems)
        if not session.tree.roots:
            session.close()
            raise SimlabError(f"loom --grow: session {args.name!r} is empty; start a document: --text TEXT")
        persona = persona_at(session.tree.path(session.tree.cursor or session.tree.roots[0].id))
    else:
        persona = (  # (a persona's frame opens a new document, as `simlab loom --persona` does)
            replace(find(args.persona), mode="document")
            if args.persona
            else Persona(name="document", frame=args.text or "", mode="document")
        )
        if args.session and store.exists(args.session):
            name = args.session
            raise SimlabError(f"loom --grow: session {name!r} exists; grow it: simlab loom {name} --grow")
        engine = load_engine(args)  # (a model that does not load leaves no empty session behind)
        session = start_session(store, persona, args.session)
    with session:
        check_document(session, session.tree.cursor or session.tree.roots[0].id)  # (before any model)
        knobs = Knobs.of(session.tree.settings.get("grow"), **changes)
        session.save_settings({**session.tree.settings, "grow": knobs.record()})
        params = persona.sampling_params(**sampling_overrides(args))
        seeds = SeedCounter(args.seed if args.seed is not None else params.seed)
        return _grow(engine or load_engine(args), session, params, knobs, seeds)


def _grow(engine, session, params, knobs: Knobs, seeds: SeedCounter) -> int:
    from simlab.turns.autoloom import grow

    tree, stop = session.tree, threading.Event()
    start = tree.cursor or tree.roots[0].id
    say(
        f"simlab: growing {session.name} from {tree.short(start)}: "
        + ", ".join(f"{k} {v}" for k, v in knobs.record().items())
    )

    def made(node) -> None:
        depth = len(tree.path(node.id)) - len(tree.path(start))
        how = f"{len(node.token_ids):>3} tok {node.finish_reason:<6} under {tree.short(node.parent)}"
        text = json.dumps(node.text[:60], ensure_ascii=False)
        print(f"{'  ' * (depth - 1)}{tree.short(node.id)} {how} {text}", flush=True)

    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        grown = grow(engine, session, start, params, knobs, seeds.take, made, stop.is_set)
    finally:
        signal.signal(signal.SIGINT, previous)
    print(
        f"grew {len(grown.nodes)} nodes, {grown.tokens} tokens ({grown.stopped}); all saved in "
        f"{session.name}: simlab loom {session.name}"
    )
    return EXIT_INTERRUPTED if grown.stopped == "interrupted" else 0
