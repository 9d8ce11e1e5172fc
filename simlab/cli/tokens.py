"""`simlab tokens`: a text's token pieces and ids under one or more tokenizers, side by side."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from simlab.cli.common import color_on, say, settings_of, utf8
from simlab.config import Settings
from simlab.errors import EXIT_BAD_INPUT, BadInput, SimlabError
from simlab.session.views import Style

UNUSED = ("model", "device", "dtype", "weights", "allow_pickle", "concurrency", "tokenizer", "context")
HOW = """Each --model M is one of:
  a local model          embedded, a folder, a .gguf file or a Hugging Face id: its own tokenizer
  tiktoken:NAME          a tiktoken encoding (cl100k_base) or an OpenAI model name tiktoken knows
  server[:MODEL]         the tokenizer of the server at --base-url (its /tokenize), as a chat counts
Without --model: the server's (with --backend openai), else the settings' model."""


def add_command(commands) -> None:
    tokens = commands.add_parser(
        "tokens",
        help="a text's tokens (pieces and ids) under one or more tokenizers, side by side",
        description="Split a text into tokens under each tokenizer given, side by side.",
        epilog=HOW,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tokens.add_argument("text", nargs="?", help="the text ('-' reads standard input)")
    tokens.add_argument(
        "--file", "-f", metavar="FILE", help="read the text from a file ('-': standard input)"
    )
    tokens.add_argument(
        "--model",
        "-m",
        dest="specs",
        metavar="M",
        nargs="+",
        action="extend",
        help="the tokenizer(s) to split by, side by side (see below)",
    )
    tokens.add_argument(
        "--json", action="store_true", help="print JSON: each token's id, text and characters"
    )
    where = tokens.add_argument_group("where tokenizers come from")
    where.add_argument(
        "--backend", choices=["local", "openai"], help="openai: server[:MODEL] is the server's"
    )
    where.add_argument("--base-url", help="the server's /v1 root, e.g. http://127.0.0.1:8000/v1")
    where.add_argument("--api-key-env", metavar="VAR", help="variable holding the server's API key")
    where.add_argument("--offline", action="store_true", default=None, help="never download tokenizer files")
    where.add_argument("--trust-remote-code", action="store_true", help="run a hub tokenizer's own code")
    tokens.set_defaults(run=cmd_tokens, **{k: None for k in UNUSED})


def cmd_tokens(args: argparse.Namespace) -> int:
    text = read_text(args)
    settings = settings_of(args)
    specs = list(dict.fromkeys(args.specs or []))
    if not specs:
        specs = ["server" if settings.backend == "openai" else settings.model]
    rows, failed = [], []
    for spec in specs:
        try:
            counter = counter_for(spec, settings, args)
            pieces = counter.pieces(text)
        except SimlabError as exc:  # the others still show; each failure is one line, and exit 2
            if len(specs) == 1:
                raise
            failed.append(f"simlab: -m {spec}: {exc}")
            continue
        rows.append({"name": spec, "source": counter.source, "count": len(pieces), "pieces": pieces})
    for line in failed:
        print(line, file=sys.stderr)
    if not rows:
        return EXIT_BAD_INPUT
    if args.json:
        out = {
            "text": text,
            "characters": len(text),
            "tokenizers": [
                {
                    "name": row["name"],
                    "source": row["source"],
                    "count": row["count"],
                    "tokens": [
                        {"id": p.id, "text": p.text, "start": p.start, "end": p.end} for p in row["pieces"]
                    ],
                }
                for row in rows
            ],
        }
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        print_side_by_side(text, rows, Style(color_on()))
    return EXIT_BAD_INPUT if failed else 0


def read_text(args: argparse.Namespace) -> str:
    if args.file and args.text:
        raise BadInput("give the text or --file FILE, not both")
    where = args.file or ("-" if args.text == "-" else None)
    if where is None:
        if args.text is None:
            raise BadInput("give a text to split: simlab tokens 'some text' (or --file FILE, or - for stdin)")
        return utf8(args.text, "the text")
    if where == "-":
        return utf8(sys.stdin.read(), "stdin")
    path = Path(where).expanduser()
    try:
        return path.read_bytes().decode("utf-8")  # as it is: a \r\n stays two characters
    except FileNotFoundError:
        raise BadInput(f"--file {where}: no such file") from None
    except UnicodeDecodeError as exc:
        raise BadInput(f"--file {where}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise BadInput(f"--file {where}: cannot read it ({exc.strerror})") from None


def counter_for(spec: str, settings: Settings, args: argparse.Namespace):
    """The tokenizer a --tokenizers entry names (engine.tokenizers)."""
    from simlab.engine.tokenizers import HFCounter, TiktokenCounter, tiktoken_encoding, tiktoken_name

    kind, _, name = spec.partition(":")
    if not spec.strip():
        raise BadInput(
            "-m needs a tokenizer: a model (embedded, a folder, a .gguf, a hub id), tiktoken:NAME or server"
        )
    if kind == "tiktoken":
        import tiktoken

        encoding, known = tiktoken_name(name) or name, tiktoken.list_encoding_names()
        if encoding not in known:
            raise BadInput(
                f"tiktoken:{name}: not an encoding tiktoken has ({', '.join(known)}) nor an OpenAI "
                "model name it knows (davinci-002, gpt-4o, ...)"
            )
        return TiktokenCounter(tiktoken_encoding(encoding, settings.offline))
    if kind == "server":
        if settings.backend != "openai":
            raise BadInput(f"{spec}: a server's tokenizer needs --backend openai --base-url URL")
        from simlab.engine.open import open_engine

        engine = open_engine(replace(settings, tokenizer="server"), name or None)
        return engine.tokenizer
    from simlab.models.load import load_tokenizer

    tokenizer = load_tokenizer(spec, settings, trust_remote_code=args.trust_remote_code, progress=say)
    return HFCounter(tokenizer, spec, "the model's own tokenizer")


def print_side_by_side(text: str, rows: list[dict], style: Style) -> None:
    """Each tokenizer's count, the text with its tokens told apart (its control characters but tab
    and line feed as their pictures, ␍ and ␛, piped too: a carriage return would write over the line
    wherever it is shown; `--json` has the very text), then one column per tokenizer."""
    from simlab.repl.screen import pictured

    for row in rows:
        per = len(text) / row["count"] if row["count"] else 0.0
        print(
            style.wrap("1", f"{row['name']}")
            + f"  {row['count']} tokens, {per:.2f} characters each  ({row['source']})"
        )
        shades = ("36", "35")
        marked = "".join(
            style.wrap(shades[k % 2], pictured(p.text)) if style.color else f"[{pictured(p.text)}]"
            for k, p in enumerate(row["pieces"])
        )
        print("  " + marked.replace("\n", "\n  "))
    print()
    cells = [[f"{p.id:>6} {shown(p.text)}" for p in row["pieces"]] for row in rows]
    widths = [max([len(row["name"]), *(len(c) for c in column)]) for row, column in zip(rows, cells)]
    print(
        ("     " + "  ".join(style.wrap("1", row["name"].ljust(w)) for row, w in zip(rows, widths))).rstrip()
    )
    for k in range(max((len(c) for c in cells), default=0)):
        line = "  ".join((column[k] if k < len(column) else "").ljust(w) for column, w in zip(cells, widths))
        print(f"{k:>4} {line}".rstrip())


def shown(piece: str) -> str:
    """A piece quoted, its bytes that are not whole characters as \\xNN (not \\\\xNN)."""
    return repr(piece).replace("\\\\x", "\\x")
