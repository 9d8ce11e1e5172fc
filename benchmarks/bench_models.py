"""simlab against llama.cpp on GGUFs in the shapes of released base models, one table, one run.

For each model shape x quant type (files made by gguf_shapes.py, random weights, real shapes and
vocabulary sizes; `embedded` is the embedded Gemma 3 270M Q4_K_M itself): prefill tokens/s at each
--prefill length (a fresh cache, as llama-bench's pp), decode tok/s for n=1 and n=4 (temperature
0.8, top-p 0.95, --tokens new tokens; llama.cpp's n=4 is four generations one after another),
four siblings' time over one reply's (simlab's n=1 and n=4 alternating with each other), and
the peak RSS of a fresh process that loads the model and samples an 8-token reply (and simlab's
the first time, in an empty simlab home, as the file is read into its cache). simlab and
llama.cpp alternate in one process, medians of --repeats. Also: which kernels simlab ran, and
whether greedy decoding on the GGUF kernel gives the float model's first 32 tokens (else the first
difference and the float model's logit margin there). Each of --weights (default gguf and gguf-a8,
activations to ~15 and to 8 bits) gets its own speed rows against llama.cpp.

    python benchmarks/bench_models.py --quantize PATH/llama-quantize \
        [--models embedded,smollm2-135m:Q4_K_M,qwen2.5-0.5b:Q8_0] [--prefill 512,2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch
from bench_decode import (
    PEAK,
    PROMPT,
    alternating,
    cpu_line,
    gguf_path,
    prefill_llama,
    prefill_simlab,
    prompt_of,
    time_llama,
    time_simlab,
)
from gguf_shapes import make

from simlab.config import load_settings
from simlab.engine.local import Engine
from simlab.models import lean, native
from simlab.models.load import load_model

DEFAULT = "embedded,smollm2-135m:Q8_0,smollm2-135m:Q4_K_M,qwen2.5-0.5b:Q8_0,qwen2.5-0.5b:Q4_K_M"

RSS = {
    "simlab": (
        "from simlab.config import load_settings\nfrom simlab.models.load import load_model\n"
        "from simlab.engine.local import Engine\nfrom simlab.engine.params import SamplingParams\n"
        "engine = Engine(load_model({spec!r}, load_settings()))\n"
        "engine.generate({prompt!r}, SamplingParams(temperature=0.8, max_new_tokens=8, seed=1))\n"
        "print(peak())"
    ),
    "llama.cpp": (
        "import llama_cpp\n"
        "llm = llama_cpp.Llama({path!r}, n_ctx=4096, n_threads={threads}, verbose=False)\n"
        "llm({prompt!r}, max_tokens=8, temperature=0.8)\n"
        "print(peak())"
    ),
}


def peak_rss(name: str, spec: str, path: Path, first_use: bool = False) -> float:
    """MiB: peak RSS of a fresh process that loads the model and samples an 8-token reply (`first_use`:
    in an empty simlab home, so the process first reads the file into its cache)."""
    code = PEAK + RSS[name].format(spec=spec, path=str(path), prompt=PROMPT, threads=torch.get_num_threads())
    with tempfile.TemporaryDirectory(prefix="simlab-first-use-") as home:
        env = {**os.environ, "SIMLAB_HOME": home} if first_use else None
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        )
    return int(out.stdout.split()[-1]) / 1024


def greedy_check(spec: str, engine: Engine) -> str:
    """Whether greedy decoding on the kernel gives the float model's first 32 tokens."""
    floats = load_model(spec, load_settings(weights="float", dtype="float32"))
    from simlab.engine.params import SamplingParams

    ids = engine.encode(PROMPT)
    got = engine.generate(ids, SamplingParams(temperature=0, max_new_tokens=32))[0].token_ids
    with torch.inference_mode():
        logits = floats.model(input_ids=torch.tensor([ids + got])).logits[0, len(ids) - 1 : -1]
    want = logits.argmax(-1).tolist()
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            margin = (logits[i, b] - logits[i, a]).item()
            return f"differs at token {i + 1} (float's logit margin there {margin:.3f})"
    return "same 32 tokens"


def kernels(engine: Engine) -> str:
    model = engine.model
    parts = [engine.info.weights, "lean step" if engine.lean else "model's forward"]
    parts.append("siblings batched" if engine.rows_alone else "siblings one by one")
    parts.append(f"{lean.fuse.__name__}d" if any("fused_" in n for n, _ in model.named_children()) else "")
    return ", ".join(p for p in parts if p)


def one_model(spec: str, args, llama_cpp) -> list[str]:
    path, rows = gguf_path(spec), []
    for weights in args.weights.split(","):
        engine = Engine(load_model(spec, load_settings(weights=weights)))
        engine.eos_ids = frozenset()
        rows += [f"{weights} {row}" for row in speeds(engine, path, args, llama_cpp)]
        rows.append(f"{weights} kernels: {kernels(engine)}")
        rows.append(f"{weights} greedy vs float: {greedy_check(spec, engine)}")
        del engine
    a, b = peak_rss("simlab", spec, path), peak_rss("llama.cpp", spec, path)
    rows.append(f"peak RSS: {a:.0f} / {b:.0f} MiB = {a / b:.2f}x")
    a = peak_rss("simlab", spec, path, first_use=True)
    rows.append(f"first use (empty simlab home: the file read into its cache), peak RSS: {a:.0f} MiB")
    return rows


def speeds(engine: Engine, path: Path, args, llama_cpp) -> list[str]:
    """Prefill and decode against llama.cpp's, alternating, and four siblings against one reply."""
    ids, threads, rows, rates = engine.encode(PROMPT), torch.get_num_threads(), [], {}
    for length in (int(x) for x in args.prefill.split(",") if x):
        prompt = prompt_of(engine, length)
        a, b = alternating(
            partial(prefill_simlab, engine, prompt),
            partial(prefill_llama, llama_cpp, path, threads, prompt),
            1 if length > 4096 else min(args.repeats, 2),
        )
        rows.append(f"prefill {length}: {a:.0f} / {b:.0f} tok/s = {a / b:.2f}x")
    llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=threads, n_batch=512, verbose=False)
    time_llama(llm, ids, 1, 4, 0)
    time_simlab(engine, ids, 1, 4, 0)
    for n in (1, 4):
        a, b = alternating(
            partial(time_simlab, engine, ids, n, args.tokens),
            partial(time_llama, llm, ids, n, args.tokens),
            args.repeats,
        )
        rates[n] = a
        rows.append(f"decode n={n}: {a:.1f} / {b:.1f} tok/s = {a / b:.2f}x")
    # simlab's own ratio from its own alternating runs: the two phases above sit minutes apart, each
    # beside llama.cpp's runs (whose threads spin on after them), and the machine drifts between
    one, four = alternating(
        partial(time_simlab, engine, ids, 1, args.tokens),
        partial(time_simlab, engine, ids, 4, args.tokens),
        args.repeats,
    )
    rows.append(f"four siblings' time / one reply's: {4 * one / four:.2f}x (alternating; "
                f"from the decode rows above, {4 * rates[1] / rates[4]:.2f}x)")  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT, help="embedded or SHAPE:QUANT, comma-separated")
    parser.add_argument("--quantize", help="llama.cpp's llama-quantize, for the K-quants")
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache" / "simlab-bench")
    parser.add_argument("--prefill", default="512,2048")
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights", default="gguf,gguf-a8", help="simlab's --weights, comma-separated")
    args = parser.parse_args()
    import llama_cpp

    print(f"command: python {' '.join(sys.argv)}")
    print(cpu_line())
    print(f"llama.cpp {llama_cpp.__version__}: {llama_cpp.llama_print_system_info().decode().strip()}")
    native.library()  # (built or loaded now, so that why() says which)
    print(f"simlab kernel: {native.why()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("each line: simlab / llama.cpp = ratio")
    for item in args.models.split(","):
        if item == "embedded":
            spec = "embedded"
        else:
            shape, quant = item.split(":")
            spec = str(make(shape, quant, args.out, args.quantize))
        print(f"\n{item}")
        for row in one_model(spec, args, llama_cpp):
            print(f"  {row}", flush=True)


if __name__ == "__main__":
    main()
