"""`simlab steer derive NAME --from A --to B`: a steering vector from two personas (steer.derive)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from simlab.cli.common import add_model_flags, add_sessions_dir, load_engine, open_store, settings_of
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
    derive.add_argument(
        "--from", dest="source", required=True, metavar="PERSONA_A", help="where it steers from"
    )
    derive.add_argument("--to", dest="target", required=True, metavar="PERSONA_B", help="where it steers to")
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

    personas = find(args.source), find(args.target)
    turns = _turns(args, personas)
    if args.samples < 1 or args.max_tokens < 1:
        raise SteerError("steer derive: --samples and --max-tokens must be 1 or more")
    path = library.target(args.name, args.force)  # (a name taken fails now, not after sampling)
    settings = settings_of(args)
    store = open_store(args, settings)
    engine = load_engine(args, settings)
    if not engine.capabilities.local:
        raise SteerError("steer derive reads the residual stream: it needs a local model, not a server")
    blocks = _blocks(args.layers, engine.info)
    params = personas[0].sampling_params(seed=args.seed, max_new_tokens=args.max_tokens)
    taken = [f"steer-{args.name}"] + [f"steer-{args.name}-{k}" for k in range(2, 1000)]
    session = store.create(next(n for n in taken if not store.exists(n)))
    with (
        session,
        Waiting(f"replies of {personas[0].name} and {personas[1].name}", 2 * len(turns), "turns") as wait,
    ):
        found = derive.sample_both(engine, session, personas, turns, params, args.samples, wait.advance)
    if not any(found.persona) or all(found.persona):
        raise SteerError(
            "steer derive: one persona gave no reply with tokens; raise --max-tokens or change turns"
        )
    results = derive.directions(found, args.aggregate)
    _table(results, blocks)
    info = engine.info
    meta = {
        "name": args.name, "model": info.name, "spec": info.spec, "revision": info.revision,
        "aggregate": args.aggregate, "from": personas[0].name, "to": personas[1].name, "turns": list(turns),
        "samples": args.samples, "seed": args.seed, "max_tokens": args.max_tokens, "session": session.name,
    }  # fmt: skip
    vector = derive.vector_of(results, blocks, meta, info.architecture)
    vector.write(path)
    best = max((r for r in results if r.block in vector.directions), key=lambda r: (r.auc, r.relative_norm))
    print(
        f"saved {args.name} ({len(vector.layers)} blocks) in {path}; its {len(found.nodes)} replies are "
        f"session {session.name}. Try: simlab generate TEXT --steer {args.name}:1@{best.block}"
    )
    return 0


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
