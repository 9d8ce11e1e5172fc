"""What the exact multiverse costs: `simlab multiverse`'s expansion (the prompt once, each level's open
prefixes in batches on copies of its cache) against the same expansion one sequence at a time (each
open prefix's whole text through the model alone, as an API-per-block Loom pays for it), in one
process, on the same prompt and settings; and that both give the same blocks.

    python benchmarks/bench_multiverse.py [--model SPEC] [--depth 8] [--cutoff 0.01] [--repeats 3]

Printed: forward passes and seconds of each, their ratio, and the largest difference between the
two's block probabilities. The GGUFs of released models' shapes (benchmarks/gguf_shapes.py) have
random weights, whose next-token distribution is flat (nothing reaches 1%): `--top-k 4
--temperature 1` gives them four forks a level, a shape of growth like real text's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_decode import cpu_line

from simlab.config import load_settings
from simlab.engine.local import Engine
from simlab.engine.multiverse import Block, distribution, grow
from simlab.engine.params import SamplingParams
from simlab.models.load import load_model

PROMPT = (
    "Deep Water Quarterly — Spring issue\nTHE OCTOPUS WHISPERER: an interview with Dr. Maya Okafor\n\n"
    "Interviewer: What did you see out there last night?\nDr. Okafor:"
)


def one_at_a_time(engine: Engine, prompt: list[int], params, depth: int, cutoff: float):
    """The same blocks, each open prefix's text read alone (no cache shared): (root, passes)."""
    root, passes, level = Block((), 1.0, 1.0), 0, None
    level = [root]
    with torch.inference_mode():
        for d in range(depth):
            opened = []
            for block in level:
                ids = prompt + list(block.ids)
                logits = engine.model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1]
                passes += 1
                q = distribution(logits, ids, params, False)
                for t in sorted(
                    torch.nonzero(block.p * q >= cutoff).flatten().tolist(), key=lambda t: -float(q[t])
                ):
                    child = Block((*block.ids, t), block.p * float(q[t]), float(q[t]))
                    block.children.append(child)
                    opened.append(child)
            opened = [b for b in opened if b.ids[-1] not in engine.eos_ids]
            if not opened:
                break
            level = opened if d < depth - 1 else []
    return root, passes


def blocks(root: Block) -> dict[tuple, float]:
    out, stack = {}, list(root.children)
    while stack:
        b = stack.pop()
        out[b.ids] = b.p
        stack.extend(b.children)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--cutoff", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=0, help="(4 gives random-weight shapes 4 forks a level)")
    parser.add_argument("--temperature", type=float, default=0.8)
    args = parser.parse_args()
    engine = Engine(load_model(args.model, load_settings()))
    params = SamplingParams(temperature=args.temperature, top_p=0.95, top_k=args.top_k)
    prompt = engine.encode(PROMPT)
    print(cpu_line())
    print(
        f"model: {engine.info.name} ({engine.info.weights}, {engine.info.dtype}); prompt {len(prompt)} tokens"
    )
    grow(engine, prompt, params, 2, 0.1)  # (warm)
    batched, alone = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        universe = grow(engine, prompt, params, args.depth, args.cutoff)
        batched.append(time.perf_counter() - started)
        started = time.perf_counter()
        root, passes = one_at_a_time(engine, prompt, params, args.depth, args.cutoff)
        alone.append(time.perf_counter() - started)
    ours, theirs = blocks(universe.root), blocks(root)
    assert ours.keys() == theirs.keys(), "the two expansions kept different blocks"
    worst = max((abs(ours[k] - theirs[k]) / theirs[k] for k in ours), default=0.0)
    a, b = statistics.median(batched), statistics.median(alone)
    print(
        f"depth {args.depth}, cutoff {args.cutoff:g}: {len(ours)} blocks, covers "
        + ", ".join(f"{100 * m:.1f}%" for m in universe.covered)
    )
    print(f"{'':>22} {'passes':>7} {'seconds':>8}")
    print(f"{'simlab multiverse':>22} {universe.passes:>7} {a:>8.2f}")
    print(f"{'one sequence at a time':>22} {passes:>7} {b:>8.2f}")
    print(f"speed-up {b / a:.1f}x; largest relative difference of a block's probability {worst:.1e}")


if __name__ == "__main__":
    main()
