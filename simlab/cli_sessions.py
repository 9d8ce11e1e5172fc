"""`simlab sessions ...` and `simlab replay`: the session commands of the CLI."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from simlab.cli_flags import add_sampling_overrides, overrides_of
from simlab.errors import SimlabError


def add_commands(commands, parser_class, add_model_flags) -> None:
    sessions = commands.add_parser("sessions", help="list, show, export, import and remove saved sessions")
    sub = sessions.add_subparsers(dest="sessions_command", metavar="ACTION", parser_class=parser_class,
                                  required=True)

    def with_dir(p):
        p.add_argument("--sessions-dir", help="the sessions folder (default ./sessions, or SIMLAB_SESSIONS)")
        return p

    with_dir(sub.add_parser("list", help="the saved sessions")).add_argument("--json", action="store_true")
    show = with_dir(sub.add_parser("show", help="a session's transcript, tree, or two branches side by side"))
    show.add_argument("id")
    show.add_argument("--tree", action="store_true", help="the whole tree, current path highlighted")
    show.add_argument("--node", help="show the path to this node (default: the cursor)")
    show.add_argument("--compare", nargs=2, metavar=("NODE_A", "NODE_B"), help="two branches side by side")
    show.add_argument("--all", action="store_true", help="include deleted (hidden) nodes in --tree")
    export = with_dir(sub.add_parser("export", help="write a session as Markdown, YAML or Loom JSON"))
    export.add_argument("id")
    export.add_argument("--format", choices=["md", "yaml", "loom"], default="md")
    export.add_argument("--node", help="for md: the path to this node (default: the cursor)")
    export.add_argument("-o", "--output", help="file to write (default: stdout)")
    imp = with_dir(sub.add_parser("import", help="import a Loom JSON tree, a simlab YAML export or a session .jsonl file"))
    imp.add_argument("file")
    imp.add_argument("--name", help="session name (default: from the file name)")
    rm = with_dir(sub.add_parser("rm", help="delete a session file"))
    rm.add_argument("id")
    compact = with_dir(sub.add_parser("compact", help="rewrite a session file as its current state"))
    compact.add_argument("id")
    sessions.set_defaults(run=cmd_sessions)

    replay = commands.add_parser("replay", help="re-run a saved path: check it reproduces, or re-sample it")
    with_dir(replay)
    replay.add_argument("id")
    replay.add_argument("--node", help="replay the path to this node (default: the cursor)")
    group = replay.add_argument_group("overrides (any of them makes a new branch)")
    group.add_argument("--persona", help="replay the path's user turns under this persona (name or YAML file)")
    add_sampling_overrides(group)
    group.add_argument("--seed", type=int)
    add_model_flags(replay)
    from simlab.trace_options import add_flags

    add_flags(replay)
    replay.set_defaults(run=cmd_replay)


def _store(args):
    from simlab.config import load_settings
    from simlab.store import SessionStore

    folder = args.sessions_dir or load_settings().sessions_dir
    return SessionStore(Path(folder))


def _style(stream=None):
    from simlab.treeview import Style

    stream = stream or sys.stdout
    return Style("NO_COLOR" not in os.environ and stream.isatty())


def _warn(problems) -> None:
    for problem in problems:
        print(f"simlab: warning: {problem}", file=sys.stderr)


def cmd_sessions(args: argparse.Namespace) -> int:
    store = _store(args)
    action = args.sessions_command
    if action == "list":
        rows = store.list()
        if args.json:
            print(json.dumps([r.__dict__ for r in rows], indent=2))
        elif not rows:
            print(f"no sessions in {store.folder}")
        for r in rows if not args.json else []:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.modified))
            flag = f"  ({r.problems} problem(s))" if r.problems else ""
            print(f"{r.name:<28} {when}  {r.nodes:>5} nodes  {' '.join(r.first_text.split())[:40]}{flag}")
        return 0
    if action == "import":
        from simlab.exchange import import_file

        session = import_file(store, Path(args.file), args.name)
        _warn(session.problems)
        print(f"imported {len(session.tree.nodes)} nodes as session {session.name!r}")
        return 0
    if action == "rm":
        store.remove(args.id)
        print(f"removed session {args.id!r}")
        return 0
    if action == "compact":
        saved = store.compact(args.id)
        print(f"compacted {args.id!r}: {saved} bytes saved")
        return 0
    session = store.open(args.id, read_only=True)
    _warn(session.problems)
    tree = session.tree
    if action == "export":
        from simlab import exchange

        if args.format == "md":
            text = exchange.to_markdown(session, args.node)
        elif args.format == "yaml":
            text = exchange.to_yaml(session)
        else:
            text = json.dumps(exchange.to_loom(session), ensure_ascii=False, indent=2) + "\n"
        if args.output:
            Path(args.output).write_text(text, encoding="utf-8")
            print(f"wrote {args.output}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0
    from simlab.treeview import render_compare, render_transcript, render_tree

    style = _style()
    if args.compare:
        a, b = (tree.resolve(x).id for x in args.compare)
        lines = render_compare(tree, a, b, style)
    elif args.tree:
        lines = render_tree(tree, style, show_hidden=args.all)
    elif tree.cursor is None and not args.node:
        lines = ["(empty session)"]
    else:
        lines = render_transcript(tree, tree.resolve(args.node).id if args.node else tree.cursor, style)
    print("\n".join(lines))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from simlab.backends import is_remote
    from simlab.cli import _load
    from simlab.replay import check_path, model_replies, params_of, replay_branch

    overrides = overrides_of(args) | ({"seed": args.seed} if args.seed is not None else {})
    from simlab.trace_options import config_from, make_tracer

    trace_config = config_from(args)
    tracer = make_tracer(trace_config, say=lambda m: print(m, file=sys.stderr))
    persona = None
    if args.persona is not None:
        from simlab.persona import find

        persona = find(args.persona)  # a bad persona fails before the model loads
    store = _store(args)
    changing = bool(overrides) or args.model is not None or persona is not None
    session = store.open(args.id, read_only=not changing)
    _warn(session.problems)
    with session:
        tree = session.tree
        target = tree.resolve(args.node).id if args.node else tree.cursor
        if target is None:
            raise SimlabError(f"session {args.id!r} is empty; nothing to replay")
        path = tree.path(target)
        replies = model_replies(path)
        if not replies:
            raise SimlabError(f"the path to {target[:8]} has no sampled replies to replay")
        for node in replies:
            params_of(node, overrides)  # a bad override fails before the model loads
        specs = sorted({n.model for n in replies if n.model})
        spec = args.model or (specs[0] if specs else None)
        if not args.model and len(specs) > 1:
            print(f"simlab: note: replies on this path came from {', '.join(specs)}; replaying with {spec}",
                  file=sys.stderr)
        dtypes = sorted({n.dtype for n in replies if n.dtype})
        if args.dtype is None and dtypes:
            args.dtype = dtypes[0]  # the dtype the replies were sampled in, or they cannot reproduce
        from simlab.backends import recorded_server
        from simlab.cli import _settings

        server = recorded_server(_settings(args), replies, args.backend)
        args.backend, args.base_url = server.backend, server.base_url or args.base_url
        engine = _load(args, spec)
        served = sorted({n.backend["base_url"] for n in replies if n.backend and "base_url" in n.backend})
        if served or is_remote(engine):
            print("simlab: note: " + (f"these replies came from a server ({', '.join(served)}); " if served else "")
                  + "a server reproduces a reply only if it honours the seed and decodes deterministically, "
                  "which vLLM, llama.cpp and transformers serve do not promise (batching changes the numbers)",
                  file=sys.stderr)
        if not changing:
            checks = check_path(engine, session, path, tracer=tracer)
            for check in checks:
                if not check.reproduced:
                    print(f"{check.node.id[:8]} differs at {check.unit} {check.first_difference}: "
                          f"stored {check.expected!r}, replayed {check.got!r}")
            same = sum(c.reproduced for c in checks)
            revisions = {n.model_revision for n in replies} - {engine.info.revision}
            print(f"reproduced {same}/{len(checks)} replies exactly")
            if revisions:
                print(f"note: the stored replies came from model revision(s) {', '.join(sorted(map(str, revisions)))}, "
                      f"this is {engine.info.revision}")
            return 0 if same == len(checks) else 1
        added = replay_branch(engine, session, path, overrides, persona=persona, tracer=tracer)
        print(f"new branch of {len(added)} node(s) ending at {added[-1].id[:8]}; compare with: "
              f"simlab sessions show {session.name} --compare {target[:8]} {added[-1].id[:8]}")
        for node in added:
            print(f"  {node.speaker or node.role}: {' '.join(node.text.split())[:100]}")
        return 0
