"""`simlab sessions list|show|export|import|rm|compact`: saved sessions from the command line."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from simlab.cli.common import Parser, add_sessions_dir, color_on, open_store, say, warn
from simlab.errors import TraceError
from simlab.session import formats
from simlab.session.store import SessionStore
from simlab.session.views import Style, render_compare, render_transcript, render_tree
from simlab.trace.files import node_trace_path, remove_session


def add_command(commands) -> None:
    sessions = commands.add_parser("sessions", help="list, show, export, import and remove saved sessions")
    sub = sessions.add_subparsers(
        dest="sessions_command", metavar="ACTION", parser_class=Parser, required=True
    )
    add_sessions_dir(sub.add_parser("list", help="the saved sessions")).add_argument(
        "--json", action="store_true"
    )
    show = add_sessions_dir(
        sub.add_parser("show", help="a session's transcript, tree, or two branches side by side")
    )
    show.add_argument("id", metavar="NAME")
    show.add_argument("--tree", action="store_true", help="the whole tree, current path highlighted")
    show.add_argument("--node", help="show the path to this node (default: the cursor)")
    show.add_argument("--compare", nargs=2, metavar=("NODE_A", "NODE_B"), help="two branches side by side")
    show.add_argument("--all", action="store_true", help="include deleted (hidden) nodes in --tree")
    export = add_sessions_dir(
        sub.add_parser("export", help="write a session as Markdown, YAML, Loom JSON or one HTML page")
    )
    export.add_argument("id", metavar="NAME")
    export.add_argument("--format", choices=["md", "yaml", "loom", "html"], default="md")
    export.add_argument("--node", help="for md: the path to this node (default: the cursor)")
    export.add_argument("-o", "--output", help="file to write (default: stdout)")
    imp = add_sessions_dir(
        sub.add_parser(
            "import", help="import a Loom JSON tree, a simlab YAML export or a session .jsonl file"
        )
    )
    imp.add_argument("file")
    imp.add_argument("--name", help="session name (default: from the file name)")
    add_sessions_dir(sub.add_parser("rm", help="delete a session file")).add_argument("id", metavar="NAME")
    add_sessions_dir(
        sub.add_parser("compact", help="rewrite a session file as its current state")
    ).add_argument("id", metavar="NAME")
    for verb, what in MARKS.items():
        mark = add_sessions_dir(sub.add_parser(verb, help=what[0]))
        mark.add_argument("id", metavar="NAME", help="the session")
        mark.add_argument(
            "node", nargs="+", help="node ids (a prefix is enough; see `sessions show NAME --tree`)"
        )
    sessions.set_defaults(run=cmd_sessions)


# verb: (help, what it changes, its value)
MARKS = {
    "hide": ("hide nodes and their branches (soft delete; `show --tree --all` shows them)", "hidden", True),
    "unhide": ("show hidden nodes again", "hidden", False),
    "bookmark": ("bookmark nodes (★)", "bookmark", True),
    "unbookmark": ("remove bookmarks", "bookmark", False),
    "canonical": ("mark nodes canonical (✓)", "canonical", True),
    "uncanonical": ("remove the canonical mark", "canonical", False),
}


def cmd_sessions(args: argparse.Namespace) -> int:
    actions = {
        "list": _list,
        "import": _import,
        "rm": _remove,
        "compact": _compact,
        "export": _export,
        "show": _show,
    }
    actions.update({verb: _mark for verb in MARKS})
    return actions[args.sessions_command](args, open_store(args))


def _mark(args: argparse.Namespace, store: SessionStore) -> int:
    """Hide, unhide, bookmark or mark canonical: every node is found before anything is written."""
    _, what, on = MARKS[args.sessions_command]
    with store.open(args.id) as session:
        nodes = [session.tree.resolve(prefix) for prefix in args.node]
        for node in nodes:
            if what == "hidden":
                session.set_hidden(node.id, on)
                cursor_path = session.tree.path(session.tree.cursor) if session.tree.cursor else []
                if on and node.parent and node.id in {n.id for n in cursor_path}:  # resume where it shows
                    session.goto(node.parent)
            else:
                session.set_tag(node.id, what, on)
            say(
                f"{args.sessions_command}: {session.tree.short(node.id)} "
                f"{node.speaker or node.role}: {node.text[:50]!r}"
            )
    return 0


def _list(args: argparse.Namespace, store: SessionStore) -> int:
    rows = store.list()
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
        return 0
    if not rows:
        print(f"no sessions in {store.folder}")
    columns = shutil.get_terminal_size().columns  # (the first words cut to fit: no row wraps)
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.modified))
        flag = f"  ({r.problems} problem(s))" if r.problems else ""
        head = f"{r.name:<28} {when}  {r.nodes:>5} node{' ' if r.nodes == 1 else 's'}"
        room = max(columns - len(head) - len(flag) - 3, 12)
        words = " ".join(r.first_text.split())
        print(f"{head}  {words if len(words) <= room else words[: room - 1] + '…'}{flag}".rstrip())
    return 0


def _import(args: argparse.Namespace, store: SessionStore) -> int:
    session = formats.import_file(store, Path(args.file), args.name)
    warn(session.problems)
    count = len(session.tree.nodes)
    print(f"imported {count} node{'' if count == 1 else 's'} as session {session.name!r}")
    return 0


def _remove(args: argparse.Namespace, store: SessionStore) -> int:
    remove_session(store, args.id)
    print(f"removed session {args.id!r}")
    return 0


def _compact(args: argparse.Namespace, store: SessionStore) -> int:
    saved = store.compact(args.id)
    print(f"compacted {args.id!r}: {saved} bytes saved")
    return 0


def _export(args: argparse.Namespace, store: SessionStore) -> int:
    session = store.open(args.id, read_only=True)
    warn(session.problems)
    heatmaps = _heatmaps(session) if args.format == "html" else None
    text = formats.render(session, args.format, args.node, heatmaps)
    if args.output:
        path = formats.write_text(Path(args.output), text, "sessions export")
        say(f"wrote {path}")
    else:
        sys.stdout.write(text)
    return 0


def _heatmaps(session) -> dict[str, dict]:
    """The residual-norm heatmap of each node with a trace (torch loads only when there is one)."""
    traced = {n.id: node_trace_path(session.path, n.id) for n in session.tree.nodes.values()}
    traced = {node_id: path for node_id, path in traced.items() if path.exists()}
    if not traced:
        return {}
    from simlab.trace.lens import norm_heatmap

    out = {}
    for node_id, path in traced.items():
        try:
            out[node_id] = norm_heatmap(path)
        except TraceError as exc:
            say(f"simlab: warning: {exc}; the page shows that node without its trace")
    return out


def _show(args: argparse.Namespace, store: SessionStore) -> int:
    session = store.open(args.id, read_only=True)
    warn(session.problems)
    tree, style = session.tree, Style(color_on())
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
