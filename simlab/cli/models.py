"""`simlab models`: the models available here and what is cached, or one model loaded and described."""

from __future__ import annotations

import argparse
import json
import shutil

from simlab.cli.common import add_model_flags, load_engine, settings_of
from simlab.models.catalog import list_models


def add_command(commands) -> None:
    models = commands.add_parser("models", help="list the models available here and what is cached")
    models.add_argument("--json", action="store_true", help="print JSON")
    models.add_argument("--load", metavar="SPEC", help="load this model and describe it")
    add_model_flags(models)
    models.set_defaults(run=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    if args.load:
        info = load_engine(args, spec=args.load).info
        if args.json:
            print(json.dumps(info.as_dict(), indent=2))
        else:
            for key, value in info.as_dict().items():
                print(f"{key:>14}: {value}")
        return 0
    rows = list_models(settings_of(args))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    # the spec column as wide as its longest entry, up to half the terminal: a longer one (a GGUF's
    # path) has its line, and its kind and state go under it in their columns
    half = shutil.get_terminal_size().columns // 2
    wide = max((len(row["spec"]) for row in rows if len(row["spec"]) <= half), default=half)
    for row in rows:
        spec = row["spec"] if len(row["spec"]) <= wide else row["spec"] + "\n" + " " * wide
        print(f"{spec:<{wide}}  {row['kind']:<8}  {row['state']}")
    return 0
