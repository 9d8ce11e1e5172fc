"""`simlab trace show|diff|list`: read recorded residual streams through the logit lens."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from simlab.cli.common import Parser, add_model_flags, load_engine, open_store, say
from simlab.errors import SimlabError, needs_local
from simlab.trace.files import node_trace_path, trace_dir


def add_command(commands) -> None:
    trace = commands.add_parser("trace", help="read residual-stream traces: the logit lens, and diffs")
    sub = trace.add_subparsers(dest="trace_command", metavar="ACTION", parser_class=Parser, required=True)
    show = sub.add_parser("show", help="per position, the top token at every layer and the residual norms")
    show.add_argument("session", help="a session name, or a trace file (.safetensors)")
    show.add_argument("node", nargs="?", help="the node (an id prefix is enough)")
    show.add_argument(
        "--png", metavar="FILE", help="write a heatmap: layers x positions, by the chosen token's probability"
    )
    show.add_argument("--sessions-dir")
    add_model_flags(show)
    diff = sub.add_parser("diff", help="where in depth two nodes' states differ, at the last prompt position")
    diff.add_argument("session")
    diff.add_argument("node_a")
    diff.add_argument("node_b")
    diff.add_argument("--png", metavar="FILE", help="write a bar chart of the cosine distance per layer")
    diff.add_argument("--sessions-dir")
    listing = sub.add_parser("list", help="the traced nodes of a session")
    listing.add_argument("session")
    listing.add_argument("--sessions-dir")
    trace.set_defaults(run=cmd_trace)


def cmd_trace(args: argparse.Namespace) -> int:
    return {"show": _show, "diff": _diff, "list": _list}[args.trace_command](args)


def _resolve(args, session_name: str, node: str | None) -> tuple[Path, str]:
    """A trace file from SESSION NODE (or a path), and a label for it."""
    if node is None:
        path = Path(session_name)
        if not path.suffix == ".safetensors":
            raise SimlabError("simlab trace: give SESSION NODE, or the path of a .safetensors trace file")
        return path, path.name
    session = open_store(args).open(session_name, read_only=True)
    node_id = session.tree.resolve(node).id
    session.close()
    return node_trace_path(session.path, node_id), f"node {node_id[:8]} of {session_name}"


def _show(args: argparse.Namespace) -> int:
    from simlab.trace.lens import Lens, heatmap_png, residual_norms, top_tokens
    from simlab.trace.record import load

    path, label = _resolve(args, args.session, args.node)
    tensors, info = load(path)
    loaded = load_engine(args, spec=args.model or info["model"])
    if not loaded.capabilities.can_trace:
        raise needs_local("the logit lens")
    if loaded.info.revision != info["revision"]:
        say(
            f"simlab: note: traced with revision {info['revision'][:12]}, reading with "
            f"{loaded.info.revision[:12]}"
        )
    lens = Lens(loaded.model)  # checks the norm/unembedding assumptions on this model, loudly
    points = [p["name"] for p in info["points"] if p["name"] in tensors]
    positions, ids = info["positions"], info["token_ids"]
    chosen = [ids[p + 1] if p + 1 < len(ids) else -1 for p in positions]
    known = [c for c in chosen if c >= 0]
    tops = top_tokens(lens, {k: v[: len(known)] for k, v in tensors.items()}, points, known)
    norms = residual_norms(tensors, points)
    decode = loaded.tokenizer.decode
    print(
        f"trace of {label}: {info['model_name']} ({info['architecture']}), {len(points)} points, "
        f"{info['dtype']}, {len(positions)} positions; prompt {info['prompt_length']} tokens"
    )
    print(
        "each cell: the lens's top token at that layer, its probability, and the probability of the "
        "token that came next (after /)"
    )
    width = shutil.get_terminal_size((160, 20)).columns
    cell = 21  # a token of up to 10 characters, its two probabilities, and a space between cells
    per_chunk = max(1, (width - 10) // cell)
    for start in range(0, len(known), per_chunk):
        cols = range(start, min(start + per_chunk, len(known)))
        print()
        print(" " * 10 + "".join(f"{'→' + _short(decode([known[j]]), cell - 2):<{cell}}" for j in cols))
        for name in points:
            top_ids, top_p, picked = tops[name]
            cells = [
                f"{_short(decode([top_ids[j][0]]), 10):<10} {top_p[j][0]:.2f}/{picked[j]:.2f}" for j in cols
            ]
            print(f"{name:<10}" + "".join(f"{c:<{cell}}" for c in cells))
    print("\nresidual norms (rows: points; columns: positions as above)")
    for name in points:
        print(f"{name:<10}" + " ".join(f"{x:8.1f}" for x in norms[name][: len(known)]))
    if args.png:
        values = [[tops[name][2][j] for j in range(len(known))] for name in points]
        columns = [f"{j} {decode([known[j]])!r}"[:18] for j in range(len(known))]
        heatmap_png(args.png, values, points, columns, f"logit lens of {label}: {info['model_name']}")
        print(
            f"wrote {args.png}: layers {points[0]} (top) to {points[-1]} (bottom) by positions, "
            "colour = probability of the chosen token (colour bar 0..1)",
            file=sys.stderr,
        )
    return 0


def _short(text: str, width: int) -> str:
    """A token as Python writes it, cut to `width` characters with a … where it was cut."""
    shown = repr(text)
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def _diff(args: argparse.Namespace) -> int:
    from simlab.trace.lens import bars_png, diff_rows
    from simlab.trace.record import load

    path_a, label_a = _resolve(args, args.session, args.node_a)
    path_b, label_b = _resolve(args, args.session, args.node_b)
    (a, info_a), (b, info_b) = load(path_a), load(path_b)
    if info_a["revision"] != info_b["revision"]:
        raise SimlabError(
            f"{label_a} and {label_b} were traced with different models; their residuals do "
            "not live in the same space"
        )
    index_a = info_a["positions"].index(info_a["prompt_length"] - 1)
    index_b = info_b["positions"].index(info_b["prompt_length"] - 1)
    points = [p["name"] for p in info_a["points"] if p["name"] in a and p["name"] in b]
    rows = diff_rows(a, b, index_a, index_b, points)
    print(
        f"{label_a} vs {label_b}: residuals at the last prompt position (the state that picks the first "
        "reply token)"
    )
    print(f"{'point':<10} {'cos dist':>9} {'|a-b|':>9} {'|a|':>9} {'|b|':>9}")
    for name, dist, gap, na, nb in rows:
        bar = "#" * int(round(dist * 40))
        print(f"{name:<10} {dist:>9.4f} {gap:>9.2f} {na:>9.2f} {nb:>9.2f}  {bar}")
    if args.png:
        bars_png(args.png, [r[1] for r in rows], points, f"{label_a} vs {label_b}")
        print(
            f"wrote {args.png}: one bar per point, {points[0]} (left) to {points[-1]} (right), height = "
            "cosine distance",
            file=sys.stderr,
        )
    return 0


def _list(args: argparse.Namespace) -> int:
    session = open_store(args).open(args.session, read_only=True)
    session.close()
    folder = trace_dir(session.path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    for path in files:
        node = session.tree.nodes.get(path.stem)
        text = " ".join(node.text.split())[:70] if node else "(node not in the session)"
        size = path.stat().st_size
        print(f"{path.stem[:8]}  {size / 1024:8.1f} KiB  {(node.speaker if node else '') or ''}: {text}")
    if not files:
        print(f"no traces for {args.session}; record some with --trace or /trace on")
    return 0
