"""`simlab personas ...`: list, show, validate, create, import and render personas. No torch."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from simlab.cli.common import Parser, say
from simlab.errors import PersonaError, SimlabError
from simlab.frame.render import chat_messages, reply_prompt
from simlab.persona.cards import Notes, import_file
from simlab.persona.library import find, library, shipped_dir, user_dir
from simlab.persona.schema import NAME, load_file
from simlab.persona.writer import template, to_yaml
from simlab.safe_yaml import MAX_BYTES
from simlab.turns import unsaved_path


def add_command(commands) -> None:
    personas = commands.add_parser(
        "personas", help="list, show, validate, create, import and render personas"
    )
    sub = personas.add_subparsers(
        dest="personas_command", metavar="ACTION", parser_class=Parser, required=True
    )
    sub.add_parser("list", help="the shipped personas and yours").add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="a persona's YAML and where it comes from")
    show.add_argument("name", help="a persona name or a YAML file")
    validate = sub.add_parser("validate", help="check persona files (default: the whole library)")
    validate.add_argument("files", nargs="*", metavar="FILE")
    new = sub.add_parser("new", help="write a commented persona template to edit")
    new.add_argument("name")
    new.add_argument("-o", "--output", help="file to write (default: $SIMLAB_HOME/personas/NAME.yaml)")
    imp = sub.add_parser(
        "import", help="import a text-generation-webui, Pygmalion or Tavern (JSON/PNG) character"
    )
    imp.add_argument("file")
    imp.add_argument("--name", help="persona name (default: from the character's name)")
    imp.add_argument("-o", "--output", help="file to write (default: $SIMLAB_HOME/personas/NAME.yaml)")
    imp.add_argument("--force", action="store_true", help="replace an existing persona file")
    render = sub.add_parser("render", help="print the exact prompt the model sees for a sample exchange")
    render.add_argument("name", help="a persona name or a YAML file")
    render.add_argument("--turn", help="the user turn (default: the persona's sample_turn)")
    personas.set_defaults(run=cmd_personas)


def cmd_personas(args: argparse.Namespace) -> int:
    return {
        "list": _list,
        "show": _show,
        "validate": _validate,
        "new": _new,
        "import": _import,
        "render": _render,
    }[args.personas_command](args)


def _list(args: argparse.Namespace) -> int:
    rows = []
    for name, path in library().items():
        origin = "shipped" if path.parent == shipped_dir() else "yours"
        try:
            p = load_file(path)
            rows.append(
                {
                    "name": name,
                    "origin": origin,
                    "mode": p.mode,
                    "user": p.user,
                    "model": p.model,
                    "description": p.description.split("\n")[0],
                    "path": str(path),
                }
            )
        except PersonaError as exc:
            rows.append({"name": name, "origin": origin, "error": str(exc), "path": str(path)})
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    width = max((len(r["name"]) for r in rows), default=4)
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<{width}}  {r['origin']:<7}  INVALID: {r['error']}")
        else:
            about = r["description"] if len(r["description"]) <= 90 else r["description"][:89] + "…"
            print(f"{r['name']:<{width}}  {r['origin']:<7}  {about}")
    return 0


def _show(args: argparse.Namespace) -> int:
    persona = find(args.name)
    print(f"# {persona.name}: from {persona.source}")
    print(to_yaml(persona), end="")
    return 0


def _validate(args: argparse.Namespace) -> int:
    paths = [Path(f) for f in args.files] or list(library().values())
    bad = 0
    for path in paths:
        try:
            persona = load_file(path)
            print(f"ok  {persona.name} ({path})")
        except PersonaError as exc:
            bad += 1
            print(f"simlab: {exc}", file=sys.stderr)
    if bad:
        print(f"simlab: {bad} of {len(paths)} persona file(s) invalid", file=sys.stderr)
    return 2 if bad else 0


def _target(name: str, output: str | None, force: bool, hint: str = "pick another NAME") -> Path:
    """Where a persona is written; a file there is refused unless `force` (hint: what to do then)."""
    if output is None and not NAME.fullmatch(name):
        raise PersonaError(f"{name!r} is not a usable persona name: use letters, digits, '-', '_' or '.'")
    path = Path(output) if output else user_dir() / f"{name}.yaml"
    if path.exists() and not force:
        raise SimlabError(f"{path} exists; {hint}")
    return path


def _write(path: Path, text: str, check=None) -> None:
    """Write atomically with ordinary permissions (mkstemp makes 0600); `check(tmp)` runs on the
    written file before it takes the name, and a failure leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new(args: argparse.Namespace) -> int:
    path = _target(args.name, args.output, force=False)
    _write(path, template(args.name, str(path)))
    print(f"wrote {path}; edit it, then: simlab personas render {args.name if not args.output else path}")
    return 0


def _import(args: argparse.Namespace) -> int:
    notes = Notes()
    persona, fmt = import_file(args.file, name=args.name, notes=notes)
    hint = "import it under another name with --name NAME, or --force to replace it"
    path = _target(persona.name, args.output, args.force, hint)
    book = _lorebook_aside(persona, path)
    text = f"# imported from {Path(args.file).name} ({fmt}) by simlab personas import\n" + to_yaml(persona)
    if len(text.encode("utf-8")) > MAX_BYTES:
        raise PersonaError(
            f"{args.file}: the persona would be {len(text.encode()) / 2**20:.1f} MB, over the "
            f"{MAX_BYTES // 2**20} MB a persona may be; nothing written"
        )
    if book is not None:
        _write(book[0], book[1])
    try:
        _write(path, text, check=load_file)  # what is written loads back, or is not written
    except BaseException:
        if book is not None:
            book[0].unlink(missing_ok=True)
        raise
    for warning in notes.warnings:
        say(f"simlab: warning: {warning}")
    unused = persona.extensions.get("simlab_import", {}).get("unused", {})
    kept = f"; kept unused field(s) under extensions: {', '.join(sorted(unused))}" if unused else ""
    aside = f"; its lorebook is in {book[0].name} beside it" if book is not None else ""
    print(f"imported {fmt} character as persona {persona.name!r} -> {path}{kept}{aside}")
    return 0


def _lorebook_aside(persona, path: Path) -> tuple[Path, str] | None:
    """A card's lorebook (character_book) goes into a JSON file beside the persona when keeping it
    inline would make the persona too big to read; the persona names the file."""
    unused = persona.extensions.get("simlab_import", {}).get("unused", {})
    book = unused.get("character_book")
    if book is None:
        return None
    text = json.dumps(book, ensure_ascii=False)
    if len(text.encode("utf-8")) < MAX_BYTES // 4:
        return None
    target = path.with_name(path.stem + ".lorebook.json")
    unused["character_book"] = {"simlab_file": target.name}
    return target, text


def _render(args: argparse.Namespace) -> int:
    persona = find(args.name)
    turn = args.turn if args.turn is not None else (persona.fill(persona.sample_turn) or "Hello.")
    path = unsaved_path(persona, [(turn, None)])
    if persona.mode == "chat":
        print(json.dumps(chat_messages(path, persona.model), indent=2, ensure_ascii=False))
        say("(chat mode: these messages go through the model's own chat template)")
        return 0
    prompt = reply_prompt(path, persona.model)
    sys.stdout.write(prompt)  # exactly: no newline added
    sys.stdout.flush()
    if sys.stdout.isatty() and not prompt.endswith("\n"):
        sys.stderr.write("\n")
    stops = ", ".join(json.dumps(s) for s in persona.stop_strings)
    say(f"(the model continues after the last line; its reply stops at {stops})")
    return 0
