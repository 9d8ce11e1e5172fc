"""`simlab ...`: the parser, the dispatch to one module per command, and the one place (with the REPL)
that turns domain errors into one line and exit code 2."""

from __future__ import annotations

import argparse
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
    multiverse,
    personas,
    replay,
    sessions,
    steer,
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
    multiverse,
    compare,
    trace,
    steer,
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


def _command_of(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The parser of the (sub)command the arguments chose: its usage errors name it."""
    while True:
        subs = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if subs is None or getattr(args, subs.dest, None) not in subs.choices:
            return parser
        parser = subs.choices[getattr(args, subs.dest)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # (argparse would blame `simlab` itself for a subcommand's unknown flag)
        _command_of(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
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
    except (UnicodeEncodeError, TypeError):  # (a tokenizer given bytes that are not UTF-8: either)
        given = sys.argv[1:] if argv is None else argv
        bad = next((a for a in given if isinstance(a, str) and not _is_utf8(a)), None)
        if bad is None:
            raise
        shown = ascii(bad[:60]) + ("..." if len(bad) > 60 else "")
        print(f"simlab: the argument {shown} holds bytes that are not UTF-8; give it as UTF-8",
              file=sys.stderr)  # fmt: skip
        return EXIT_BAD_INPUT


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
