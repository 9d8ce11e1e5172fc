"""`simlab multiverse --text TEXT`: every continuation of a text above a probability, to a depth,
exactly (engine.multiverse), as nested blocks with bars, or as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from simlab.cli.common import add_model_flags, add_sampling_flags, load_engine, sampling_overrides, say
from simlab.engine.params import SamplingParams
from simlab.errors import SimlabError, needs_local

if TYPE_CHECKING:  # (torch is imported when a multiverse is drawn, not to read the flags)
    from simlab.engine.multiverse import Block, Multiverse

BAR = 24  # characters of a bar at 100%


def add_command(commands) -> None:
    mv = commands.add_parser(
        "multiverse",
        help="every continuation of a text above a probability, to a depth, exactly (the block multiverse)",
    )
    mv.add_argument("--text", required=True, help="the text whose futures to draw ('-': standard input)")
    mv.add_argument("--depth", type=int, default=8, help="tokens deep (default 8)")
    mv.add_argument(
        "--cutoff", type=float, default=0.01, help="keep blocks of at least this probability (default 0.01)"
    )
    mv.add_argument(
        "--raw", action="store_true", help="the model's own distribution, not the sampling settings'"
    )
    mv.add_argument("--json", action="store_true", help="print the tree as JSON")
    add_sampling_flags(
        mv.add_argument_group("sampling (the distribution drawn, unless --raw)"), defaults=True
    )
    add_model_flags(mv)
    mv.set_defaults(run=cmd_multiverse)


def cmd_multiverse(args: argparse.Namespace) -> int:
    params = SamplingParams(**sampling_overrides(args))  # (checked before the model loads)
    if args.depth < 1 or args.depth > 64:
        raise SimlabError(f"multiverse: --depth {args.depth}: give 1 to 64 tokens")
    if not 0 < args.cutoff <= 1:
        raise SimlabError(f"multiverse: --cutoff {args.cutoff:g}: give a probability above 0, at most 1")
    from simlab.engine.multiverse import grow

    if args.backend == "openai":
        raise needs_local("a multiverse (every next-token distribution, from the weights)")
    text = sys.stdin.read() if args.text == "-" else args.text
    engine = load_engine(args)
    ids = engine.encode(text)
    if not ids:
        raise SimlabError("multiverse: the text has no tokens; give some text to continue")
    if len(ids) + args.depth > engine.info.context_length:
        raise SimlabError(
            f"multiverse: {len(ids)} tokens and --depth {args.depth} do not fit the model's context"
        )
    say(f"simlab: multiverse of {len(ids)} tokens, depth {args.depth}, cutoff {args.cutoff:g}")
    universe = grow(engine, ids, params, args.depth, args.cutoff, raw=args.raw)
    decode = engine.tokenizer.decode
    if args.json:
        json.dump(as_json(universe, decode, params, len(ids)), sys.stdout, ensure_ascii=False)
        print()
    else:
        for line in drawn(universe, decode):
            print(line)
        print(summary(universe, params))
    return 0


def drawn(universe: Multiverse, decode) -> list[str]:
    """Each block a line: a bar as long as its probability, the probability, and its token's text
    indented by its depth (children under their parent, most probable first)."""
    lines: list[str] = []

    def walk(block: Block) -> None:
        for child in block.children:
            filled = child.p * BAR
            bar = "█" * int(filled) + ("▌" if filled - int(filled) >= 0.5 else "")
            token = json.dumps(decode([child.ids[-1]]), ensure_ascii=False)
            lines.append(f"{bar:<{BAR}} {100 * child.p:5.1f}%  {'  ' * (len(child.ids) - 1)}{token}")
            walk(child)

    walk(universe.root)
    return lines


def summary(universe: Multiverse, params: SamplingParams) -> str:
    knobs = f"temperature {params.temperature:g}, top-k {params.top_k}, top-p {params.top_p:g}"
    knobs += f", min-p {params.min_p:g}, typical-p {params.typical_p:g}"
    knobs += f", repetition penalty {params.repetition_penalty:g}"
    how = "the model's own distribution" if universe.raw else f"as sampled ({knobs})"
    covers = ", ".join(f"{100 * m:.1f}% at depth {d + 1}" for d, m in enumerate(universe.covered))
    return (
        f"covers {covers or 'nothing above the cutoff'}; {how}; {universe.passes} forward passes in "
        f"{universe.seconds:.2f} s"
    )


def as_json(universe: Multiverse, decode, params: SamplingParams, prompt_tokens: int) -> dict:
    def block(b: Block) -> dict:
        return {
            "ids": list(b.ids),
            "token": b.ids[-1],
            "text": decode([b.ids[-1]]),
            "p": b.p,
            "conditional": b.conditional,
            "children": [block(c) for c in b.children],
        }

    return {
        "prompt_tokens": prompt_tokens,
        "depth": universe.depth,
        "cutoff": universe.cutoff,
        "raw": universe.raw,
        "params": None if universe.raw else params.__dict__,
        "covered": universe.covered,
        "passes": universe.passes,
        "seconds": universe.seconds,
        "blocks": [block(c) for c in universe.root.children],
    }
