"""What steering costs: decode speed with a vector on (every block, or one) against the same engine
with none, in one process, runs alternating; and the prefill of a prompt read again, which a steered
run does not take from the kept cache (its prompt's cache holds the vector's work).

    python benchmarks/bench_steer.py [--model SPEC] [--repeats 5] [--tokens 64]

The vector is random (its effect on speed does not depend on what it says), at strength 1; the
target is a decode at 95% or more of the unsteered speed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import numpy as np
from bench_decode import PROMPT, cpu_line

from simlab.config import load_settings
from simlab.engine.local import Engine
from simlab.engine.params import SamplingParams
from simlab.engine.steering import Steering, Term
from simlab.models.load import load_model


def rate(engine: Engine, ids: list[int], n: int, tokens: int, steering, seed: int, greedy: bool) -> float:
    sampling = {"temperature": 0} if greedy else {"temperature": 0.8, "top_p": 0.95}
    params = SamplingParams(**sampling, max_new_tokens=tokens, seed=seed)
    extra = {"steering": steering} if steering else {}
    run = engine.start(ids, params, n=n, **extra)
    for _ in run:
        pass
    assert all(len(c.tokens) == tokens for c in run.completions)
    return n * tokens / run.stats.decode_seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    engine = Engine(load_model(args.model, load_settings()))
    engine.eos_ids = frozenset()
    info = engine.info
    print(cpu_line())
    print(f"model: {info.name} ({info.weights}, {info.dtype}), {info.layers} blocks x {info.hidden_size}")
    rng = np.random.default_rng(0)
    every = {b: rng.standard_normal(info.hidden_size).astype(np.float32) for b in range(1, info.layers)}
    cases = {
        f"blocks 1-{info.layers - 1}": Steering((Term("bench", "x", 1.0, every),)),
        f"block {info.layers // 2}": Steering(
            (Term("bench", "x", 1.0, {info.layers // 2: every[info.layers // 2]}),)
        ),
    }
    ids = engine.encode(PROMPT)
    rate(engine, ids, 1, 4, None, 0, True)  # (warm)
    # greedy: the forward pass's cost alone; sampling: also what the vector does to the distribution
    # the sampler draws from (a flatter one has a wider top-p nucleus to sort)
    print(f"{'steering':>14} {'sampling':>9} {'n':>3} {'tok/s on':>9} {'tok/s off':>10} {'ratio':>7}")
    for name, steering in cases.items():
        for greedy in (True, False):
            for n in (1, 4):
                on, off = [], []
                for r in range(args.repeats):
                    on.append(partial(rate, engine, ids, n, args.tokens, steering, greedy=greedy)(seed=r))
                    off.append(partial(rate, engine, ids, n, args.tokens, None, greedy=greedy)(seed=r))
                a, b = statistics.median(on), statistics.median(off)
                how = "greedy" if greedy else "top-p"
                print(f"{name:>14} {how:>9} {n:>3} {a:>9.1f} {b:>10.1f} {a / b:>6.3f}x")
    # a chat's next turn: the prompt read again. Unsteered, the kept cache holds it; steered, it is fed.
    params = SamplingParams(temperature=0, max_new_tokens=1)
    long = engine.encode(PROMPT * 8)
    for label, steering in (("unsteered", None), ("steered", cases[f"blocks 1-{info.layers - 1}"])):
        extra = {"steering": steering} if steering else {}
        engine.generate(long, params, **extra)
        started = time.perf_counter()
        engine.generate(long, params, **extra)
        took = 1000 * (time.perf_counter() - started)
        print(f"the same {len(long)}-token prompt again, {label}: {took:.0f} ms")


if __name__ == "__main__":
    main()
