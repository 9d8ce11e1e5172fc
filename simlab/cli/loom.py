"""`simlab loom`: the full-screen tree editor on a saved session, or on a new document."""

from __future__ import annotations

import argparse
import sys

from simlab.cli.chat import add_read_only, cmd_chat
from simlab.cli.common import add_session_flags, add_sessions_dir
from simlab.cli.grow import FLAGS as GROW_FLAGS
from simlab.cli.grow import add_flags as add_grow_flags
from simlab.cli.grow import cmd_grow
from simlab.errors import SimlabError


def add_command(commands) -> None:
    loom = commands.add_parser(
        "loom",
        help="the full-screen tree editor (as Loom): a session, or a new document to continue",
        description="Open a saved session (chat or Loom document) or start a new document, full screen: "
        "the tree, the current branch as one text, continuations sampled at the cursor. ? lists the keys.",
    )
    loom.add_argument("name", nargs="?", metavar="SESSION", help="a saved session (default: a new document)")
    loom.add_argument("--persona", "-p", help="a new document opens with this persona's frame")
    loom.add_argument("--text", help="a new document's opening text")
    loom.add_argument("--session", help="name for a new document's session (default: the date and time)")
    loom.add_argument(
        "--children", "-n", type=int, metavar="N", help="continuations g samples, branches --grow makes (3)"
    )
    add_read_only(loom, "SESSION")
    add_sessions_dir(loom)
    add_session_flags(loom, seed_help="seed of the first continuation; +1 for each after it")
    add_grow_flags(loom)
    loom.set_defaults(run=cmd_loom)


def cmd_loom(args: argparse.Namespace) -> int:
    args.children_given = args.children is not None
    args.children = 3 if args.children is None else args.children
    knobs = [f"--{k.replace('_', '-')}" for k in (*GROW_FLAGS, "fork_mode") if getattr(args, k) is not None]
    if knobs and not args.grow:
        raise SimlabError(
            f"loom: {', '.join(knobs)}: the autoloom's, with --grow (in the editor: /set, then G)"
        )
    if not (args.grow or sys.stdin.isatty() and sys.stdout.isatty()):
        raise SimlabError(
            "simlab loom is full-screen and needs a terminal; `simlab sessions export NAME --format html` "
            "shows a session without one"
        )
    if not 1 <= args.children <= 16:
        raise SimlabError(f"loom: --children {args.children}: use a number from 1 to 16")
    if args.name is not None and (args.persona or args.text is not None or args.session):
        raise SimlabError("loom: SESSION opens a saved session as it is; drop --persona/--text/--session")
    if args.read_only and args.name is None:
        raise SimlabError("loom: --read-only opens a saved session: simlab loom SESSION --read-only")
    if args.grow:
        if args.read_only:
            raise SimlabError("loom --grow adds nodes; drop --read-only")
        return cmd_grow(args)
    args.resume, args.loom = args.name, True
    args.mode = None if args.name is not None else "document"
    return cmd_chat(args)
