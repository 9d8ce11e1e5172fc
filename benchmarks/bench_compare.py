"""Sweep throughput of `simlab compare`: samples decoded as one batch per variant (after one shared
prefill) against one sample at a time, in one process, on the same spec and seeds.

The same seeds give the same tokens alone or in a batch, so both sides decode identical samples;
the benchmark checks that and reports samples/second and the ratio.

    python benchmarks/bench_compare.py [--model SPEC] [--samples 8] [--tokens 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

import simlab.compare as compare
from simlab.compare.spec import build_spec
from simlab.compare.sweep import run_sweep
from simlab.config import load_settings
from simlab.engine.local import Engine
from simlab.models.load import load_model
from simlab.session.store import SessionStore


def sweep(spec, engine, batch: int) -> tuple[float, list[list[int]]]:
    compare.MAX_BATCH = batch
    with tempfile.TemporaryDirectory() as folder, SessionStore(folder).create("bench") as session:
        started = time.perf_counter()
        runs = run_sweep(spec, session, lambda model: engine)
        elapsed = time.perf_counter() - started
    tokens = [list(s[0].token_ids) for run in runs for s in run.samples]
    return len(tokens) / elapsed, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    engine = Engine(load_model(args.model, load_settings(), progress=lambda m: print(m, file=sys.stderr)))
    spec = build_spec(
        {
            "turns": ["What is the strangest thing you have seen?"],
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
    batch = compare.MAX_BATCH
    sweep(
        build_spec(
            {"turns": ["hi"], "samples": 1, "variants": ["interview"], "sampling": {"max_tokens": 2}},
            "warm-up",
        ),
        engine,
        1,
    )
    batched, a = sweep(spec, engine, batch)
    alone, b = sweep(spec, engine, 1)
    assert a == b, "batched and one-at-a-time samples differ"
    print(f"{'decoding':<16} {'samples/s':>10}")
    print(f"{'one at a time':<16} {alone:>10.3f}")
    print(f"{'batched':<16} {batched:>10.3f}")
    print(f"ratio batched / one at a time: {batched / alone:.2f}x (identical samples: yes)")


if __name__ == "__main__":
    main()
