"""Sweep throughput of `simlab compare`: samples decoded as one batch per variant and turn (the
first turn's after one shared prefill, later turns' with a prompt each, engine.ragged) against one
sample at a time, in one process, on the same spec and seeds.

The same seeds give the same tokens alone or in a batch, so both sides decode identical samples;
the benchmark checks that and reports samples/second and the ratio, overall and per turn.

    python benchmarks/bench_compare.py [--model SPEC] [--samples 8] [--tokens 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

import simlab.compare.sweep as sweeping
from simlab.compare.spec import build_spec
from simlab.compare.sweep import Progress, run_sweep
from simlab.config import load_settings
from simlab.engine.local import Engine
from simlab.models.load import load_model
from simlab.session.store import SessionStore


def sweep(spec, engine, batch: int) -> tuple[float, list[float], list[list[int]]]:
    """(samples per second, seconds per turn, every reply's tokens) of one sweep."""
    sweeping.MAX_BATCH = batch
    turns: dict[int, float] = {}
    last = [time.perf_counter()]

    def report(progress: Progress, what: str) -> None:  # "... turn T)": the time since the last report
        now = time.perf_counter()
        t = int(what.split("turn ")[1].split(")")[0].split(",")[0])
        turns[t] = turns.get(t, 0.0) + now - last[0]
        last[0] = now

    with tempfile.TemporaryDirectory() as folder, SessionStore(folder).create("bench") as session:
        started = time.perf_counter()
        total = len(spec.variants) * spec.samples * len(spec.turns)
        runs = run_sweep(spec, session, lambda model: engine, Progress(total=total, report=report))
        elapsed = time.perf_counter() - started
    tokens = [list(r.token_ids) for run in runs for s in run.samples for r in s]
    return len(tokens) / elapsed, [turns[t] for t in sorted(turns)], tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    engine = Engine(load_model(args.model, load_settings(), progress=lambda m: print(m, file=sys.stderr)))
    spec = build_spec(
        {
            "turns": ["What is the strangest thing you have seen?", "And what did you do then?"],
            "samples": args.samples,
            "seed": 11,
            "sampling": {"max_tokens": args.tokens},
            "variants": ["interview", "stage-play"],
        },
        "benchmark",
    )
    info = engine.info
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"model: {info.name}, {info.device}, {info.dtype}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; 2 variants x {args.samples} samples, up to {args.tokens} tokens"
    )
    batch = sweeping.MAX_BATCH
    sweep(
        build_spec(
            {"turns": ["hi"], "samples": 1, "variants": ["interview"], "sampling": {"max_tokens": 2}},
            "warm-up",
        ),
        engine,
        1,
    )
    batched, batched_turns, a = sweep(spec, engine, batch)
    alone, alone_turns, b = sweep(spec, engine, 1)
    assert a == b, "batched and one-at-a-time samples differ"
    print(f"{'decoding':<16} {'samples/s':>10} {'turn 1 s':>9} {'turn 2 s':>9}")
    print(f"{'one at a time':<16} {alone:>10.3f} {alone_turns[0]:>9.1f} {alone_turns[1]:>9.1f}")
    print(f"{'batched':<16} {batched:>10.3f} {batched_turns[0]:>9.1f} {batched_turns[1]:>9.1f}")
    print(
        f"ratio batched / one at a time: {batched / alone:.2f}x overall; turn 1 (siblings) "
        f"{alone_turns[0] / batched_turns[0]:.2f}x, turn 2 (a prompt each) "
        f"{alone_turns[1] / batched_turns[1]:.2f}x (identical samples: yes)"
    )


if __name__ == "__main__":
    main()
