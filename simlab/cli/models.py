"""`simlab models`: the models available here and what is cached, or one model loaded and described."""

from __future__ import annotations

import argparse
import json

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
    for row in rows:
        print(f"{row['spec']:<44} {row['kind']:<9} {row['state']}")
    return 0
