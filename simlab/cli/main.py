"""`simlab ...`: the parser, the dispatch to one module per command, and the one place (with the REPL)
that turns domain errors into one line and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from simlab import __version__
from simlab.cli import (
    chat,
    compare,
    doctor,
    generate,
    loom,
    models,
    personas,
    replay,
    sessions,
    tokens,
    trace,
)
from simlab.cli.common import Parser, signals_interrupt
from simlab.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, SimlabError

COMMANDS = (
    generate,
    models,
    sessions,
    replay,
    personas,
    chat,
    loom,
    compare,
    trace,
    tokens,
    doctor,
)  # the order of --help


def build_parser() -> Parser:
    parser = Parser(prog="simlab", description="A terminal lab for simulator-style prompting.")
    parser.add_argument("--version", action="version", version=f"simlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `simlab` is `simlab chat`
        args = parser.parse_args(["chat"])
    try:
        with signals_interrupt():
            return args.run(args)
    except SimlabError as exc:
        print(f"simlab: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\nsimlab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
