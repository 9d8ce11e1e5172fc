"""`simlab steer`: the steering-vector library (list, show, import, export, rm)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from simlab.cli.steer_derive import add_derive, cmd_derive
from simlab.config import invoked_as
from simlab.errors import SteerError
from simlab.steer import library
from simlab.steer.use import runs


def add_command(commands) -> None:
    steer = commands.add_parser(
        "steer",
        help="steering vectors: directions added to the residual stream (llama.cpp control vectors)",
        description="The steering-vector library in $SIMLAB_HOME/steer: each vector is a GGUF control "
        "vector llama.cpp loads with --control-vector as it is. --steer NAME[:STRENGTH][@LAYERS] on "
        "`generate` applies one.",
    )
    sub = steer.add_subparsers(dest="steer_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="the vectors in the library").add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="a vector's blocks, norms and where it came from")
    show.add_argument("name", help="a library name or a .gguf file")
    show.add_argument("--json", action="store_true")
    imp = sub.add_parser(
        "import",
        help="add a control-vector GGUF (repeng's, llama.cpp's) or a steering-vectors .pt to the library",
    )
    imp.add_argument("file")
    imp.add_argument("--name", help="its name in the library (default: the file's name)")
    imp.add_argument("--force", action="store_true", help="replace a vector of that name")
    export = sub.add_parser("export", help="copy a vector out, for llama.cpp's --control-vector")
    export.add_argument("name")
    export.add_argument("-o", "--output", required=True, help="the .gguf file to write")
    sub.add_parser("rm", help="delete a vector from the library").add_argument("name")
    add_derive(sub)
    steer.set_defaults(run=cmd_steer)


def cmd_steer(args: argparse.Namespace) -> int:
    actions = {"list": _list, "show": _show, "import": _import, "export": _export, "rm": _remove}
    return {**actions, "derive": cmd_derive}[args.steer_command](args)


def _list(args: argparse.Namespace) -> int:
    rows = []
    for name, path in library.names().items():
        try:
            vector = library.find(str(path))
            rows.append({"name": name, "blocks": vector.layers, "hidden": vector.hidden, **_origin(vector)})
        except SteerError as exc:
            rows.append({"name": name, "problem": str(exc)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(
            f"no steering vectors in {library.folder()}; `{invoked_as()} steer derive NAME --from A --to B` "
            f"makes one, `{invoked_as()} steer import FILE` adds one"
        )
    for row in rows:
        about = row.get("problem") or f"{_blocks(row['blocks'])} · {row['hidden']} wide · {row['model']}"
        print(f"{row['name']:<20} {about}")
    return 0


def _origin(vector) -> dict:
    meta = vector.meta
    return {"model": meta.get("model") or vector.model_hint or "model unknown", "digest": vector.digest[:12]}


def _blocks(layers: list[int]) -> str:
    """4,5,6,9 -> 'blocks 4-6,9'."""
    return ("block " if len(layers) == 1 else "blocks ") + runs(layers)


def _show(args: argparse.Namespace) -> int:
    path = library.path_of(args.name)
    vector = library.find(args.name)
    norms = vector.norms()
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(path),
                    "digest": vector.digest,
                    "hidden": vector.hidden,
                    "norms": norms,
                    "model_hint": vector.model_hint,
                    "meta": vector.meta,
                },
                indent=2,
            )
        )
        return 0
    print(f"{args.name}: {path}")
    print(f"  {_blocks(vector.layers)}, {vector.hidden} wide; sha256 of the directions {vector.digest[:16]}")
    print(f"  made for {_origin(vector)['model']}; added at each block's output (llama.cpp's direction.N)")
    for key in sorted(k for k in vector.meta if k not in ("name", "model", "hook", "blocks")):
        value = vector.meta[key]
        print(f"  {key}: {'; '.join(map(str, value)) if isinstance(value, list) else value}")
    made = vector.meta.get("blocks") if isinstance(vector.meta.get("blocks"), dict) else {}
    print("  block  norm      |dir|/|h|  AUC (held out, when derived)")
    for layer in sorted({*norms, *(int(b) for b in made if str(b).isdigit())}):
        figures = made.get(str(layer), {})
        relative, auc = figures.get("relative_norm"), figures.get("auc")
        kept = f"{norms[layer]:<9.4g}" if layer in norms else "(not kept)"
        extra = f"  {relative:>8.3f}  {auc:>5.2f}" if relative is not None and auc is not None else ""
        print(f"  {layer:>5}  {kept}{extra}")
    return 0


def _import(args: argparse.Namespace) -> int:
    name, vector, left = library.import_file(Path(args.file), args.name, args.force)
    print(f"imported {name}: {_blocks(vector.layers)}, {vector.hidden} wide; --steer {name}:1 applies it")
    for what in left:
        print(f"left out: {what}")
    return 0


def _export(args: argparse.Namespace) -> int:
    source = library.path_of(args.name)
    library.find(args.name)  # (a damaged file is refused, not copied on)
    out = Path(args.output)
    if out.suffix != ".gguf":
        raise SteerError(f"{out}: write the vector to a .gguf file (llama.cpp's --control-vector reads one)")
    try:
        shutil.copyfile(source, out)
    except OSError as exc:
        raise SteerError(
            f"cannot write {out}: {exc.strerror or exc}; give a path in a folder you can write"
        ) from None
    print(f"wrote {out}; llama.cpp: --control-vector-scaled {out} STRENGTH")
    return 0


def _remove(args: argparse.Namespace) -> int:
    path = library.path_of(args.name)
    if library.is_path(args.name):
        raise SteerError(f"simlab steer rm removes a vector from the library by name, not {args.name}")
    path.unlink()
    print(f"removed steering vector {args.name!r}")
    return 0
