"""Decode speed with the residual stream traced (all points, bfloat16) against untraced, in one run.

Same model, prompt, sampling and seeds; runs alternate between the two so that machine noise hits
both; the median of --repeats is used. Also prints the bytes per token a trace costs.

    python benchmarks/bench_trace.py [--model SPEC] [--repeats 3] [--tokens 48]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from simlab.config import load_settings
from simlab.engine.local import Engine
from simlab.engine.params import SamplingParams
from simlab.models.load import load_model
from simlab.trace.config import TraceConfig
from simlab.trace.record import Recorder

PROMPT = (
    "The following is a transcript of an interview with a lighthouse keeper.\n\n"
    "Interviewer: How long have you kept this light?\nKeeper:"
)


def rate(engine: Engine, tokens: int, seed: int, traced: bool) -> float:
    recorder = Recorder(engine.model, TraceConfig()) if traced else None
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=tokens, seed=seed)
    started = time.perf_counter()
    [c] = engine.generate(PROMPT, params, recorder=recorder)
    elapsed = time.perf_counter() - started
    if recorder is not None:
        tensors, _ = recorder.result(0)  # include assembling the trace
        assert tensors["norm"].shape[0] == len(c.tokens)
    return len(c.tokens) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    engine = Engine(load_model(args.model, load_settings(), progress=lambda m: print(m, file=sys.stderr)))
    engine.eos_ids = frozenset()  # both sides decode exactly --tokens tokens
    info = engine.info
    per_token = Recorder(engine.model, TraceConfig()).bytes_per_token()
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"model: {info.name}, {info.device}, {info.dtype}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.tokens} tokens, median of {args.repeats}"
    )
    rate(engine, 4, 0, False), rate(engine, 4, 0, True)  # warm-up
    plain, traced = [], []
    for r in range(args.repeats):
        plain.append(rate(engine, args.tokens, r, False))
        traced.append(rate(engine, args.tokens, r, True))
    a, b = statistics.median(plain), statistics.median(traced)
    print(
        f"untraced {a:.2f} tok/s, traced (all {info.layers + 2} points, bfloat16) {b:.2f} tok/s: "
        f"traced/untraced {b / a:.1%} (target >= 85%)"
    )
    print(f"trace size: {per_token:,} bytes per token ({per_token / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
