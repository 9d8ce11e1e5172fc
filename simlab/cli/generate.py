"""`simlab generate`: continue a prompt (streamed), or N branches of it, with a stats line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from simlab.cli.common import (
    add_model_flags,
    add_sampling_flags,
    add_steer_flags,
    add_trace_flags,
    color_on,
    load_engine,
    make_tracer,
    refuse_idle_flags,
    sampling_params,
    say,
    settings_of,
    trace_config,
    utf8,
)
from simlab.errors import EXIT_INTERRUPTED, SimlabError
from simlab.repl.progress import Waiting
from simlab.repl.screen import for_terminal
from simlab.steer.use import no_server, steerings_of, sweep_of, uses_of


def add_command(commands) -> None:
    gen = commands.add_parser("generate", help="continue a prompt (streamed), or N branches of it")
    gen.add_argument("prompt", nargs="?", help="the text to continue (default, or -: read from stdin)")
    gen.add_argument("-n", type=int, default=1, help="number of sibling continuations (default 1)")
    gen.add_argument(
        "--json", action="store_true", help="print one JSON object with tokens and log-probabilities"
    )
    group = gen.add_argument_group("sampling")
    add_sampling_flags(group, defaults=True)
    group.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop at this text (repeatable; \\n is a newline)",
    )
    group.add_argument("--seed", type=int, help="seed of branch 1; branch i uses seed+i-1 (default random)")
    add_steer_flags(gen)
    add_model_flags(gen)
    add_trace_flags(gen).add_argument(
        "--trace-dir", default="traces", help="where generate writes trace files (default ./traces)"
    )
    gen.set_defaults(run=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    params = sampling_params(args)  # validated before the model is loaded, so a bad flag costs no waiting
    if args.n < 1:
        raise SimlabError(f"generate: -n {args.n} is invalid; use 1 or more")
    settings = settings_of(args)
    refuse_idle_flags(args, settings)
    tracer = make_tracer(trace_config(args), settings)
    prompt = _read_prompt(args)
    if args.steer and settings.backend == "openai":  # (said before any server is asked)
        raise no_server()
    uses = uses_of(args.steer)  # (the vectors' files read before the model loads)
    n = sweep_of(uses) if args.n == 1 else args.n  # (a sweep of strengths: one a sibling)
    engine = load_engine(args, settings)
    recorder = tracer.recorder(engine) if tracer else None
    steering = steerings_of(uses, engine, n, args.steer_positions) if uses else None
    extra = {"steering": steering} if steering else {}
    run = engine.start(prompt, params, n=n, recorder=recorder, **extra)
    out = sys.stdout
    live = n == 1 and not args.json
    if live and out.isatty():
        shown = for_terminal(out, prompt)
        out.write(f"\x1b[2m{shown}\x1b[0m" if color_on(out) else shown)
    wait = Waiting("sampling", n) if not live else nullcontext()
    try:
        with wait:
            for delta in run:
                if live and delta.text:
                    out.write(for_terminal(out, delta.text))
                    out.flush()
                elif not live:
                    wait.follow(delta, run.completions, getattr(run, "max_new", None))
            if not live:
                wait.follow(None, run.completions)
    except KeyboardInterrupt:
        run.interrupt()
    if args.json:
        json.dump(run_json(engine.info, prompt, run, steering), out, ensure_ascii=False)
        out.write("\n")
    elif live:
        out.write("\n")
    else:
        print_completions(out, run.completions, color=color_on(out), steering=steering)
    say(stats_line(run))
    if recorder is not None:
        _save_traces(args, tracer, recorder, engine, run)
    return EXIT_INTERRUPTED if run.interrupted else 0


def _read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None and args.prompt != "-":  # (-: stdin, as `simlab tokens -` reads it)
        return utf8(args.prompt, "the prompt")
    if sys.stdin.isatty():
        raise SimlabError("generate: no prompt; give one as an argument or pipe it on stdin")
    text = utf8(sys.stdin.read(), "the prompt on stdin")
    if not text:
        raise SimlabError(
            "generate: stdin was empty, so there is no prompt; pipe some text in or give it as an "
            'argument ("" samples from the start of text)'
        )
    return text


def _save_traces(args, tracer, recorder, engine, run) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for c in run.completions:
        if c.tokens:
            path = Path(args.trace_dir) / f"generate-{stamp}-{c.index + 1}.safetensors"
            tracer.save(path, recorder, c.index, engine, run.prompt_ids, c)
            say(f"trace: {path} (simlab trace show {path})")


def print_completions(out: TextIO, completions, color: bool, steering=None) -> None:
    """Each branch under a header with its number, seed, finish reason and mean log-probability (and
    its steering, where siblings are steered at different strengths)."""
    dim, reset = ("\x1b[2m", "\x1b[0m") if color else ("", "")
    for c in completions:
        mean = sum(t.logprob for t in c.tokens) / len(c.tokens) if c.tokens else float("nan")
        seed = f"seed {c.seed}" if c.seed is not None else "greedy"
        steered = ""
        if isinstance(steering, list):
            terms = steering[c.index].terms if steering[c.index] else ()
            steered = " · " + (" + ".join(f"{t.name}:{t.strength:g}" for t in terms) or "unsteered")
        out.write(
            f"{dim}── {c.index + 1}/{len(completions)} · {seed}{steered} · {c.finish_reason} · "
            f"{len(c.tokens)} tok · mean logprob {mean:.2f} ──{reset}\n"
        )
        out.write(for_terminal(out, c.text) + "\n")
    out.flush()


def stats_line(run) -> str:
    s = run.stats
    finishes = sorted({c.finish_reason for c in run.completions if c.finish_reason})
    seeds = [c.seed for c in run.completions if c.seed is not None]
    seed = (
        f"seed {seeds[0]}" if len(seeds) == 1 else (f"seeds {seeds[0]}..{seeds[-1]}" if seeds else "greedy")
    )
    prefill_rate = s.prompt_tokens / s.prefill_seconds if s.prefill_seconds else 0.0
    return (
        f"[prompt {s.prompt_tokens} tok, {prefill_rate:.0f} tok/s | generated {s.generated_tokens} tok, "
        f"{s.tokens_per_second:.1f} tok/s | first token {s.first_token_seconds * 1000:.0f} ms | "
        f"{', '.join(finishes)} | {seed}]"
    )


def run_json(info, prompt: str, run, steering=None) -> dict:
    model = info.as_dict()
    if model.get("context_from") == "":  # (a server that did not say: unknown, not a number)
        model["context_length"] = None
    return {
        "model": model,
        "params": asdict(run.params),
        **({"steering": steering.record()} if steering and not isinstance(steering, list) else {}),
        "prompt": prompt,
        "prompt_tokens": len(run.prompt_ids) or run.stats.prompt_tokens,  # (a server: its count or usage)
        "stats": {**asdict(run.stats), "tokens_per_second": run.stats.tokens_per_second},
        "completions": [
            {
                "index": c.index,
                **(
                    {"steering": steering[c.index].record() if steering[c.index] else None}
                    if isinstance(steering, list)
                    else {}
                ),
                "seed": c.seed,
                "text": c.text,
                "finish_reason": c.finish_reason,
                "stop_string": c.stop_string,
                "truncated_to_context": c.truncated_to_context,
                **({"server": c.server} if c.server else {}),
                "tokens": [
                    {
                        "id": t.id,
                        "text": t.text,
                        "logprob": t.logprob,
                        "top": [{"id": i, "text": s, "logprob": lp} for i, s, lp in t.top],
                    }
                    for t in c.tokens
                ],
            }
            for c in run.completions
        ],
    }
