"""Terminal rendering of generations: streamed text, numbered branches, a stats line."""

from __future__ import annotations

from typing import TextIO


def stream_to(out: TextIO, text: str) -> None:
    if text:
        out.write(text)
        out.flush()


def print_completions(out: TextIO, completions, color: bool) -> None:
    """Each branch under a header with its number, seed, finish reason and mean log-probability."""
    dim, reset = ("\x1b[2m", "\x1b[0m") if color else ("", "")
    for c in completions:
        mean = sum(t.logprob for t in c.tokens) / len(c.tokens) if c.tokens else float("nan")
        seed = f"seed {c.seed}" if c.seed is not None else "greedy"
        out.write(f"{dim}── {c.index + 1}/{len(completions)} · {seed} · {c.finish_reason} · "
                  f"{len(c.tokens)} tok · mean logprob {mean:.2f} ──{reset}\n")
        out.write(c.text + "\n")
    out.flush()


def stats_line(run) -> str:
    s = run.stats
    finishes = sorted({c.finish_reason for c in run.completions if c.finish_reason})
    seeds = [c.seed for c in run.completions if c.seed is not None]
    seed = f"seed {seeds[0]}" if len(seeds) == 1 else (f"seeds {seeds[0]}..{seeds[-1]}" if seeds else "greedy")
    prefill_rate = s.prompt_tokens / s.prefill_seconds if s.prefill_seconds else 0.0
    return (f"[prompt {s.prompt_tokens} tok, {prefill_rate:.0f} tok/s | generated {s.generated_tokens} tok, "
            f"{s.tokens_per_second:.1f} tok/s | first token {s.first_token_seconds * 1000:.0f} ms | "
            f"{', '.join(finishes)} | {seed}]")


def print_stats(err: TextIO, run) -> None:
    err.write(stats_line(run) + "\n")
    err.flush()
