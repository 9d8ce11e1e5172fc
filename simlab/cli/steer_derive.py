"""`simlab steer derive NAME --from A --to B`: a steering vector from two personas (steer.derive)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from simlab.cli.common import add_model_flags, add_sessions_dir, load_engine, open_store, settings_of
from simlab.config import invoked_as
from simlab.errors import SteerError
from simlab.persona.library import find
from simlab.repl.progress import Waiting
from simlab.steer import library
from simlab.steer.turns import TURNS
from simlab.steer.vector import parse_layers


def add_derive(sub) -> None:
    derive = sub.add_parser(
        "derive",
        help="a vector from two personas: B's mean residual minus A's, per block, over their replies",
        description="Both personas answer the same user turns (seeded replies saved in session "
        "steer-NAME); per block, the direction is B's mean residual over its reply tokens minus A's "
        "(or --aggregate pca). Prints each block's direction norm and how well it separates the two "
        "personas' tokens on turns it was not made from, then saves the vector in the library.",
    )
    derive.add_argument("name", help="the vector's name in the library")
    derive.add_argument("--from", dest="source", metavar="PERSONA_A", help="where it steers from")
    derive.add_argument("--to", dest="target", metavar="PERSONA_B", help="where it steers to")
    derive.add_argument(
        "--pairs",
        metavar="FILE",
        help="instead of personas, contrastive prompt pairs as repeng takes them (JSON or JSONL of "
        '{"positive": ..., "negative": ...}): each prompt\'s last token; positive is where it steers to',
    )
    derive.add_argument(
        "--turns", metavar="FILE", help="user turns, one a line (default: 8 shipped questions)"
    )
    derive.add_argument("--samples", type=int, default=4, help="replies per turn and persona (default 4)")
    derive.add_argument("--max-tokens", type=int, default=48, help="tokens per reply (default 48)")
    derive.add_argument("--seed", type=int, default=1, help="seed of each turn's first reply (default 1)")
    derive.add_argument("--layers", metavar="BLOCKS", help="the blocks the file keeps (default: all but 0)")
    derive.add_argument(
        "--aggregate", choices=("mean", "pca"), default="mean", help="mean difference (default) or pca"
    )
    derive.add_argument("--force", action="store_true", help="replace a vector of that name")
    add_model_flags(derive)
    add_sessions_dir(derive)


def cmd_derive(args: argparse.Namespace) -> int:
    from simlab.steer import derive

    both = args.source is not None and args.target is not None
    if (args.pairs is None) != both or (args.pairs and (args.source or args.target)):
        raise SteerError("steer derive: give --from PERSONA_A --to PERSONA_B, or --pairs FILE")
    personas = (find(args.source), find(args.target)) if args.pairs is None else None
    if personas and personas[0].render_frame() == personas[1].render_frame():
        raise SteerError(
            f"steer derive: --from {args.source} and --to {args.target} are the same frame: their difference "
            "is nothing but sampling noise; give two personas that differ"
        )
    turns = _turns(args, personas) if personas else []
    pairs = _pairs(args.pairs) if args.pairs else []
    if args.samples < 1 or args.max_tokens < 1:
        raise SteerError("steer derive: --samples and --max-tokens must be 1 or more")
    path = library.target(args.name, args.force)  # (a name taken fails now, not after sampling)
    settings = settings_of(args)
    store = open_store(args, settings)
    engine = load_engine(args, settings)
    if not engine.capabilities.local:
        raise SteerError("steer derive reads the residual stream: it needs a local model, not a server")
    blocks = _blocks(args.layers, engine.info)
    info = engine.info
    meta = {"name": args.name, "model": info.name, "spec": info.spec, "revision": info.revision}
    meta["aggregate"] = args.aggregate
    if pairs:
        found, session = derive.read_pairs(engine, pairs), None
        meta |= {"pairs": len(pairs), "source": Path(args.pairs).name}
    else:
        found, session = _both(args, engine, store, personas, turns)
        meta |= {"from": personas[0].name, "to": personas[1].name, "turns": list(turns)}
        meta |= {"samples": args.samples, "seed": args.seed, "max_tokens": args.max_tokens}
        meta["session"] = session.name
    results = derive.directions(found, args.aggregate)
    _table(results, blocks)
    vector = derive.vector_of(results, blocks, meta, info.architecture)
    vector.write(path)
    best = max((r for r in results if r.block in vector.directions), key=lambda r: (r.auc, r.relative_norm))
    made = f"its {len(found.nodes)} replies are session {session.name}" if session else f"{len(pairs)} pairs"
    print(
        f"saved {args.name} ({len(vector.layers)} blocks) in {path}; {made}. "
        f"Try: {invoked_as()} generate TEXT --steer {args.name}:1@{best.block}"
    )
    return 0


def _both(args: argparse.Namespace, engine, store, personas, turns):
    """Both personas' replies to the turns, in a new session steer-NAME; (residuals, session)."""
    from simlab.steer import derive

    params = personas[0].sampling_params(seed=args.seed, max_new_tokens=args.max_tokens)
    taken = [f"steer-{args.name}"] + [f"steer-{args.name}-{k}" for k in range(2, 1000)]
    session = store.create(next(n for n in taken if not store.exists(n)))
    what = f"replies of {personas[0].name} and {personas[1].name}"
    with session, Waiting(what, 2 * len(turns), "turns") as wait:
        found = derive.sample_both(engine, session, personas, turns, params, args.samples, wait.advance)
    if not any(found.persona) or all(found.persona):
        raise SteerError(
            "steer derive: one persona gave no reply with tokens; raise --max-tokens or change turns"
        )
    return found, session


def _pairs(name: str) -> list[tuple[str, str]]:
    """repeng's DatasetEntry list: a JSON list, or one JSON object a line."""
    try:
        text = Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SteerError(f"--pairs {name}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        )
    except ValueError as exc:
        raise SteerError(f"--pairs {name}: not JSON or JSONL ({exc})") from None
    pairs = []
    for k, entry in enumerate(data, 1):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("positive"), str)
            and isinstance(entry.get("negative"), str)
        ):
            raise SteerError(f'--pairs {name}: entry {k} is not {{"positive": TEXT, "negative": TEXT}}')
        pairs.append((entry["positive"], entry["negative"]))
    if len(pairs) < 2:
        raise SteerError(
            f"--pairs {name}: give two pairs or more (a direction is judged on pairs it was not made from)"
        )
    return pairs


def _blocks(text: str | None, info) -> tuple[int, ...]:
    """The blocks the file keeps: 1 to the last unless --layers says; block 0 is refused (llama.cpp
    never steers it), as is a block the model does not have."""
    blocks = parse_layers(text, "--layers") if text else tuple(range(1, info.layers))
    if 0 in blocks or blocks[-1] >= info.layers:
        raise SteerError(
            f"--layers {text}: keep blocks from 1 to {info.layers - 1} ({info.name} has {info.layers}; "
            "llama.cpp never steers block 0)"
        )
    return blocks


def _turns(args: argparse.Namespace, personas) -> list[str]:
    if args.turns:
        try:
            lines = Path(args.turns).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SteerError(f"--turns {args.turns}: {getattr(exc, 'strerror', None) or exc}") from None
        turns = [line.strip() for line in lines if line.strip()]
        if not turns:
            raise SteerError(f"--turns {args.turns}: no turns in it (one user turn a line)")
        return turns
    own = [p.sample_turn for p in personas if p.sample_turn]
    return list(dict.fromkeys([*own, *TURNS]))


def _table(results, kept) -> None:
    print("block  |dir|/|h|  AUC (held out)")
    for r in results:
        bar = "#" * round(max(0.0, (r.auc - 0.5) * 2) * 20) if not math.isnan(r.auc) else ""
        mark = "" if r.block in kept and r.block >= 1 else "  (not kept)"
        print(f"{r.block:>5}  {r.relative_norm:>8.3f}  {r.auc:>5.2f} {bar}{mark}")
