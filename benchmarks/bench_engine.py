"""The engine's costs that a chat feels, each measured as a ratio in one run:

- N sibling replies after one prefill against one reply (wall time, same tokens per branch);
- time to first token at turn 20 of a chat against turn 1 (the KV cache of the path is kept);
- peak resident memory of the `simlab chat` process on the model (scripted, three turns).

    python benchmarks/bench_engine.py [--model SPEC] [--dtype auto] [--turns 20]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from simlab.config import load_settings
from simlab.engine.local import Engine
from simlab.engine.params import SamplingParams
from simlab.models.load import load_model
from simlab.persona.library import find
from simlab.repl.state import Chat
from simlab.session.store import SessionStore

PROMPT = (
    "The following is a transcript of an interview with a lighthouse keeper.\n\n"
    "Interviewer: How long have you kept this light?\nKeeper:"
)


def wall(engine: Engine, n: int, tokens: int, seed: int) -> float:
    engine.prefix.clear()  # each measurement prefills its prompt
    started = time.perf_counter()
    engine.generate(
        PROMPT, SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=tokens, seed=seed), n=n
    )
    return time.perf_counter() - started


def ttft_by_turn(engine: Engine, turns: int) -> list[float]:
    persona = find("interview")
    with tempfile.TemporaryDirectory() as folder:
        out = io.StringIO()
        chat = Chat.new(
            engine,
            SessionStore(folder),
            persona,
            persona.sampling_params(seed=5, max_new_tokens=24),
            out,
            err=out,
        )
        firsts = []
        for k in range(turns):
            chat.user_turn(f"Tell me about the year {1950 + k}.")
            firsts.append(chat.last.first_token_ms)
        chat.close()
    return firsts


# The child reads its own VmHWM as it exits: its ru_maxrss would include this big process's size
# at the fork (ru_maxrss survives exec; VmHWM belongs to the new address space).
CHAT = (
    "import sys\n"
    "from simlab.cli.main import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "finally:\n"
    "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
    "    print('VmHWM', hwm, file=sys.stderr)\n"
)


def peak_memory(model: str, dtype: str) -> float:
    """Peak RSS (MiB) of a scripted `simlab chat` process (three turns)."""
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run(
            [sys.executable, "-c", CHAT, "chat", "--model", model, "--dtype", dtype, "--sessions-dir", folder]
            + ["--max-tokens", "16", "--seed", "1"],
            input="Hello.\nWhere do you live?\nWhy?\n",
            capture_output=True,
            text=True,
            env={**os.environ},
        )
    lines = [line for line in done.stderr.splitlines() if line.startswith("VmHWM ")]
    if not lines:
        raise SystemExit(f"the scripted chat did not finish: {done.stderr.strip()[-300:]}")
    return int(lines[-1].split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    engine = Engine(
        load_model(args.model, load_settings(dtype=args.dtype), progress=lambda m: print(m, file=sys.stderr))
    )
    engine.eos_ids = frozenset()
    info = engine.info
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"model: {info.name}, {info.device}, {info.dtype}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    wall(engine, 1, 4, 0)
    rows = []
    for n in (1, 2, 4, 8):
        rows.append((n, statistics.median(wall(engine, n, args.tokens, r) for r in range(3))))
    one = rows[0][1]
    print(
        f"siblings ({args.tokens} tokens each, median of 3): "
        + ", ".join(f"N={n} {t:.2f} s ({t / one:.2f}x N=1)" for n, t in rows)
    )
    engine.eos_ids = Engine(load_model(args.model, load_settings(dtype=args.dtype))).eos_ids
    firsts = ttft_by_turn(engine, args.turns)
    print(
        f"time to first token: turn 1 {firsts[0]:.0f} ms (the frame's prefill), turn 2 {firsts[1]:.0f} ms, "
        f"turn {args.turns} {firsts[-1]:.0f} ms: turn {args.turns} / turn 1 {firsts[-1] / firsts[0]:.2f}x "
        f"(target <= 1.3x), / turn 2 {firsts[-1] / firsts[1]:.2f}x; per turn (ms): "
        f"{', '.join(f'{x:.0f}' for x in firsts)}"
    )
    print(f"peak memory of `simlab chat` ({info.dtype}): {peak_memory(args.model, info.dtype):.0f} MiB")


if __name__ == "__main__":
    main()
