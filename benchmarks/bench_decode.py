"""Decode speed of simlab's engine against transformers' own `generate`, in one process.

Same model (the embedded Gemma 3 270M unless --model), same prompt, same sampling
(temperature 0.8, top-p 0.95), 64 new tokens, no early stop; n=1 and n=4 branches.
Runs alternate between the two so that machine noise hits both; the median of --repeats is used.

    python benchmarks/bench_decode.py [--model SPEC] [--repeats 3] [--tokens 64] [--weights int8,int4]

With --weights (default int8,int4), each weight-only format is also timed against the float model
(n=1 and n=4, alternating runs), and its quality measured: the mean |difference| of the per-token
log-probability the two give the first 2,000 tokens of the README (teacher-forced), and whether
greedy decoding of the README's examples agrees.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from transformers import GenerationConfig

from simlab.config import load_settings
from simlab.engine.local import Engine
from simlab.engine.params import SamplingParams
from simlab.models.load import load_model

PROMPT = (
    "The following is a transcript of an interview with a lighthouse keeper.\n\n"
    "Interviewer: How long have you kept this light?\nKeeper:"
)


def time_simlab(engine: Engine, ids: list[int], n: int, tokens: int, seed: int) -> float:
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=tokens, seed=seed)
    started = time.perf_counter()
    completions = engine.generate(ids, params, n=n)
    elapsed = time.perf_counter() - started
    assert all(len(c.tokens) == tokens for c in completions)
    return n * tokens / elapsed


def time_generate(model, ids: list[int], n: int, tokens: int, seed: int) -> float:
    config = GenerationConfig(
        do_sample=True,
        temperature=0.8,
        top_p=0.95,
        top_k=0,
        max_new_tokens=tokens,
        num_return_sequences=n,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    prompt = torch.tensor([ids])
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)
    elapsed = time.perf_counter() - started
    assert out.shape == (n, len(ids) + tokens)
    return n * tokens / elapsed


GREEDY_PROMPTS = ["The capital of France is", "Q: What is 2+2?\nA:", PROMPT]


def cpu_line() -> str:
    """The CPU model and the vector extensions that decide which kernels run."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return f"cpu: unknown; torch kernels: {torch.backends.cpu.get_cpu_capability()}"
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    has = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    return (
        f"cpu: {name}; {' '.join(has) or 'no AVX2'}; torch kernels: {torch.backends.cpu.get_cpu_capability()}"
    )


def quality(float_engine: Engine, engine: Engine) -> tuple[float, int, int]:
    """(mean |delta logprob| per token on the README's first 2,000 tokens, greedy runs that agree, runs)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    ids = float_engine.encode(text)[:2000]
    a, b = float_engine.score(ids), engine.score(ids)
    delta = sum(abs(x - y) for x, y in zip(a, b)) / len(a)
    greedy = SamplingParams(temperature=0, max_new_tokens=24)
    same = sum(
        float_engine.generate(p, greedy)[0].token_ids == engine.generate(p, greedy)[0].token_ids
        for p in GREEDY_PROMPTS
    )
    return delta, same, len(GREEDY_PROMPTS)


def compare_weights(args, float_engine: Engine, ids: list[int]) -> None:
    print(f"{'weights':>8} {'n':>3} {'tok/s':>8} {'float tok/s':>12} {'ratio':>7}")
    for weights in [w for w in args.weights.split(",") if w]:
        settings = load_settings(device=args.device, dtype=args.dtype, weights=weights)
        engine = Engine(load_model(args.model, settings, progress=lambda m: print(m, file=sys.stderr)))
        engine.eos_ids = frozenset()
        time_simlab(engine, ids, 1, 4, 0)
        for n in (1, 4):
            ours, base = [], []
            for r in range(args.repeats):
                ours.append(time_simlab(engine, ids, n, args.tokens, r))
                base.append(time_simlab(float_engine, ids, n, args.tokens, r))
            a, b = statistics.median(ours), statistics.median(base)
            print(f"{weights:>8} {n:>3} {a:>8.1f} {b:>12.1f} {a / b:>6.2f}x")
        delta, same, runs = quality(float_engine, engine)
        print(
            f"{weights:>8} quality: mean |delta logprob| {delta:.3f} nats/token (2,000 tokens of README.md); "
            f"greedy identical on {same}/{runs} prompts"
        )


def copy_bandwidth() -> float:
    """Bytes per second that one large tensor copy moves (best of 5): the memory roof for decoding."""
    source = torch.empty(256 * 2**20, dtype=torch.uint8).fill_(1)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - started)
    return source.numel() / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--weights", default="int8,int4", help="weight-only formats to compare (or '')")
    args = parser.parse_args()
    loaded = load_model(
        args.model,
        load_settings(device=args.device, dtype=args.dtype),
        progress=lambda m: print(m, file=sys.stderr),
    )
    engine = Engine(loaded)
    engine.eos_ids = frozenset()  # both sides decode exactly --tokens tokens
    ids = engine.encode(PROMPT)
    info = loaded.info
    print(f"command: python {' '.join(sys.argv)}")
    print(cpu_line())
    print(
        f"model: {info.name} ({info.parameters / 1e6:.0f}M params), {info.device}, {info.dtype}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        f"prompt {len(ids)} tokens, {args.tokens} new tokens, temperature 0.8, top-p 0.95, "
        f"median of {args.repeats}"
    )
    time_simlab(engine, ids, 1, 4, 0)  # warm-up both paths
    time_generate(loaded.model, ids, 1, 4, 0)
    print(f"{'n':>3} {'simlab tok/s':>13} {'generate tok/s':>15} {'ratio':>7}")
    for n in (1, 4):
        ours, theirs = [], []
        for r in range(args.repeats):
            ours.append(time_simlab(engine, ids, n, args.tokens, r))
            theirs.append(time_generate(loaded.model, ids, n, args.tokens, r))
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"{n:>3} {a:>13.1f} {b:>15.1f} {a / b:>6.2f}x")
        if n == 1:
            single = a
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    bandwidth = copy_bandwidth()
    roof = bandwidth / weights
    print(
        f"memory roof: {weights / 2**20:.0f} MiB of weights read per token at {bandwidth / 1e9:.1f} GB/s "
        f"(one tensor copy) = {roof:.1f} tok/s; simlab n=1 reaches {single / roof:.0%} of it"
    )
    if args.weights:
        compare_weights(args, engine, ids)


if __name__ == "__main__":
    main()
