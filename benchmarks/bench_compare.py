"""Sweep throughput of `simlab compare`: samples decoded as one batch per variant and turn (the
first turn's after one shared prefill, later turns' with a prompt each, engine.ragged) against one
sample at a time, in one process, on the same spec and seeds.

The same seeds give the same tokens alone or in a batch, so both sides decode identical samples;
the benchmark checks that and reports samples/second and the ratio, overall and per turn.

    python benchmarks/bench_compare.py [--model SPEC] [--samples 8] [--tokens 32]

--memory: instead, the peak RSS of a fresh process that loads the model and runs the sweep
(batched), and of llama.cpp (llama-cpp-python, the same GGUF) doing the same work in a fresh
process: every prompt the sweep fed, as token ids, each followed by as many replies of --tokens
tokens as the sweep sampled after it, one after another (each reusing the prompt's cache).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def spec_of(samples: int, tokens: int):
    return build_spec(
        {
            "turns": ["What is the strangest thing you have seen?", "And what did you do then?"],
            "samples": samples,
            "seed": 11,
            "sampling": {"max_tokens": tokens},
            "variants": ["interview", "stage-play"],
        },
        "benchmark",
    )


def recorded_sweep(model: str, samples: int, tokens: int, prompts: Path | None) -> None:
    """Run the sweep batched in this process and print its peak RSS (KiB); `prompts`: also write
    every prompt it fed (ids) with its number of replies there, as JSON."""
    engine = Engine(load_model(model, load_settings()))
    fed: list[tuple[list[int], int]] = []
    start = engine.start

    def recording(prompt, params, n=1, **kwargs):
        run = start(prompt, params, n, **kwargs)
        fed.append((list(run.prompt_ids), n))
        return run

    engine.start = recording
    sweep(spec_of(samples, tokens), engine, sweeping.MAX_BATCH)
    if prompts is not None:
        prompts.write_text(json.dumps(fed))
    print(peak_kib())


def peak_kib() -> int:
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1])


LLAMA = """
import json, sys, llama_cpp
prompts, tokens, threads, path = json.load(open(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
context = max(len(ids) for ids, _ in prompts) + tokens + 8
llm = llama_cpp.Llama(path, n_ctx=context, n_threads=threads, n_batch=512, verbose=False)
for k, (ids, n) in enumerate(prompts):
    for i in range(n):
        llm.set_seed(k * 100 + i)
        for made, _ in enumerate(llm.generate(ids, temp=0.8, top_p=0.95, top_k=0, min_p=0.0)):
            if made == tokens - 1:
                break
print(int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1]))
"""


def memory(args) -> None:
    """The sweep's peak RSS in a fresh process, and llama.cpp's on the same prompts and replies."""
    from bench_decode import gguf_path

    here = str(Path(__file__).resolve().parent)
    with tempfile.TemporaryDirectory() as folder:
        prompts = Path(folder) / "prompts.json"
        code = (
            f"import sys; sys.path.insert(0, {here!r}); import bench_compare as b; "
            f"b.recorded_sweep({args.model!r}, {args.samples}, {args.tokens}, b.Path({str(prompts)!r}))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        fed = json.loads(prompts.read_text())
        work = f"{len(fed)} prompts, {sum(n for _, n in fed)} replies of up to {args.tokens} tokens"
        print(f"simlab compare sweep ({work}): peak RSS {int(out.stdout.split()[-1]) / 1024:.0f} MiB")
        path = gguf_path(args.model)
        if path is None or subprocess.run([sys.executable, "-c", "import llama_cpp"]).returncode:
            print("llama.cpp: not run (needs a GGUF and llama-cpp-python)")
            return
        threads = str(torch.get_num_threads())
        run = [sys.executable, "-c", LLAMA, str(prompts), str(args.tokens), threads, str(path)]
        out = subprocess.run(run, capture_output=True, text=True, check=True)
        peak = int(out.stdout.split()[-1]) / 1024
        print(f"llama.cpp, the same prompts and replies: peak RSS {peak:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--memory", action="store_true", help="peak RSS against llama.cpp's, fresh processes")
    args = parser.parse_args()
    if args.memory:
        memory(args)
        return
    engine = Engine(load_model(args.model, load_settings(), progress=lambda m: print(m, file=sys.stderr)))
    spec = spec_of(args.samples, args.tokens)
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
