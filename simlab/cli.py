"""Command line: `simlab generate`, `simlab models`; chat, sessions, replay and personas in cli_*.

The only place, with the REPL, that turns domain errors into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from typing import Sequence

from simlab.errors import SimlabError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the command and how to get help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", "-m", help="'embedded' (default), a Hugging Face id, a folder or a .gguf file")
    group.add_argument("--device", help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    group.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="default auto")
    group.add_argument("--offline", action="store_true", default=None,
                       help="never download; use only local files and the Hugging Face cache")
    group.add_argument("--allow-pickle", action="store_true", default=None,
                       help="allow pickle (.bin) weights, which can run code when loaded")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="run model code shipped with a hub model (only for sources you trust)")
    group.add_argument("--backend", choices=["local", "openai"],
                       help="local (default): the model runs here; openai: an OpenAI-compatible server "
                            "(vLLM, llama.cpp, TGI, transformers serve) at --base-url")
    group.add_argument("--base-url", help="the server's /v1 root, e.g. http://127.0.0.1:8000/v1")
    group.add_argument("--api-key-env", metavar="VAR",
                       help="environment variable holding the server's API key (default SIMLAB_API_KEY)")
    group.add_argument("--concurrency", metavar="N",
                       help="requests in flight at once to a server (default 4; 1 makes seeds repeat on "
                            "servers that share one random generator, such as transformers serve)")


def _add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--temperature", "-t", type=float, default=0.8, help="0 = greedy (default 0.8)")
    group.add_argument("--top-k", type=int, default=0, help="0 = off")
    group.add_argument("--top-p", type=float, default=0.95, help="1 = off (default 0.95)")
    group.add_argument("--min-p", type=float, default=0.0, help="0 = off")
    group.add_argument("--typical-p", type=float, default=1.0, help="1 = off")
    group.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    group.add_argument("--max-tokens", type=int, default=128, help="new tokens per branch (default 128)")
    group.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="stop at this text (repeatable; \\n is a newline)")
    group.add_argument("--seed", type=int, help="seed of branch 1; branch i uses seed+i-1 (default random)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="simlab", description="A terminal lab for simulator-style prompting.")
    from simlab import __version__

    parser.add_argument("--version", action="version", version=f"simlab {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    gen = commands.add_parser("generate", help="continue a prompt (streamed), or N branches of it")
    gen.add_argument("prompt", nargs="?", help="the text to continue (default: read from stdin)")
    gen.add_argument("-n", type=int, default=1, help="number of sibling continuations (default 1)")
    gen.add_argument("--json", action="store_true", help="print one JSON object with tokens and log-probabilities")
    _add_sampling_flags(gen)
    _add_model_flags(gen)
    from simlab.trace_options import add_flags

    add_flags(gen)
    gen.add_argument_group("residual-stream trace").add_argument(
        "--trace-dir", default="traces", help="where generate writes trace files (default ./traces)")
    gen.set_defaults(run=cmd_generate)

    models = commands.add_parser("models", help="list the models available here and what is cached")
    models.add_argument("--json", action="store_true", help="print JSON")
    models.add_argument("--load", metavar="SPEC", help="load this model and describe it")
    _add_model_flags(models)
    models.set_defaults(run=cmd_models)

    from simlab.cli_sessions import add_commands

    add_commands(commands, _Parser, _add_model_flags)
    from simlab.cli_personas import add_commands as add_persona_commands

    add_persona_commands(commands, _Parser)
    from simlab.cli_chat import add_command as add_chat_command

    add_chat_command(commands, _add_model_flags)
    from simlab.cli_compare import add_command as add_compare_command

    add_compare_command(commands, _add_model_flags)
    from simlab.cli_trace import add_command as add_trace_command

    add_trace_command(commands, _Parser, _add_model_flags)
    doctor = commands.add_parser("doctor", help="what this installation has, and whether each part works")
    doctor.add_argument("--load", action="store_true", help="also load the model and generate three tokens")
    doctor.add_argument("--sessions-dir", help="the sessions folder to check (default ./sessions)")
    _add_model_flags(doctor)
    doctor.set_defaults(run=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `simlab` is `simlab chat`
        args = parser.parse_args(["chat"])
    try:
        with _signals_interrupt():
            return args.run(args)
    except SimlabError as exc:
        print(f"simlab: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\nsimlab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0


def _signals_interrupt():
    """SIGTERM and SIGHUP stop a command as Ctrl-C does: generate keeps what it wrote, compare keeps
    every finished sample (rerun to resume); the chat REPL handles them itself (cli_chat)."""
    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    return on_end_signals(interrupt)


@contextlib.contextmanager
def on_end_signals(handler):
    """Run handler(signum, frame) on SIGTERM and SIGHUP inside the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _settings(args: argparse.Namespace):
    from simlab.config import load_settings, validate_device

    if args.device is not None:
        validate_device(args.device)
    return load_settings(**settings_flags(args))


def settings_flags(args: argparse.Namespace) -> dict:
    """The model flags as load_settings takes them."""
    return dict(model=args.model, device=args.device, dtype=args.dtype, offline=args.offline,
                allow_pickle=args.allow_pickle, backend=args.backend, base_url=args.base_url,
                api_key_env=args.api_key_env, concurrency=args.concurrency)


def _load(args: argparse.Namespace, spec: str | None = None):
    """The engine (local or remote) for the model flags."""
    from simlab.backends import open_engine

    settings = _settings(args)
    return open_engine(settings, spec, trust_remote_code=args.trust_remote_code,
                       progress=lambda message: print(message, file=sys.stderr, flush=True))


def _read_prompt(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        return args.prompt
    if sys.stdin.isatty():
        raise SimlabError("simlab generate: no prompt; give one as an argument or pipe it on stdin")
    return sys.stdin.read()


def cmd_generate(args: argparse.Namespace) -> int:
    from simlab.sampling import SamplingParams

    params = SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        typical_p=args.typical_p, repetition_penalty=args.repetition_penalty,
        max_new_tokens=args.max_tokens, seed=args.seed,
        stop=tuple(s.encode().decode("unicode_escape") if "\\" in s else s for s in args.stop),
    )  # validated before the model is loaded, so a bad flag costs no waiting
    if args.n < 1:
        raise SimlabError(f"simlab generate: -n {args.n} is invalid; use 1 or more")
    from simlab.trace_options import config_from, make_tracer

    trace_config = config_from(args)
    prompt = _read_prompt(args)
    from simlab.render import print_completions, print_stats, stream_to

    tracer = make_tracer(trace_config, say=lambda m: print(m, file=sys.stderr))
    if tracer is not None and args.backend == "openai":
        from simlab.remote import needs_local

        raise needs_local("--trace (the residual stream)")
    engine = _load(args)
    recorder = tracer.recorder(engine) if tracer else None
    run = engine.start(prompt, params, n=args.n, recorder=recorder)
    out = sys.stdout
    live = args.n == 1 and not args.json
    if live and out.isatty():
        out.write(f"\x1b[2m{prompt}\x1b[0m" if _color() else prompt)
    try:
        for delta in run:
            if live:
                stream_to(out, delta.text)
    except KeyboardInterrupt:
        run.interrupt()
    if args.json:
        json.dump(_run_json(engine.info, prompt, run), out, ensure_ascii=False)
        out.write("\n")
    elif live:
        out.write("\n")
    else:
        print_completions(out, run.completions, color=_color() and out.isatty())
    print_stats(sys.stderr, run)
    if recorder is not None:
        _save_generate_traces(args, tracer, recorder, engine, run)
    return EXIT_INTERRUPTED if run.interrupted else 0


def _save_generate_traces(args, tracer, recorder, engine, run) -> None:
    import time
    from pathlib import Path

    stamp = time.strftime("%Y%m%d-%H%M%S")
    for c in run.completions:
        if c.tokens:
            path = Path(args.trace_dir) / f"generate-{stamp}-{c.index + 1}.safetensors"
            tracer.save(path, recorder, c.index, engine, run.prompt_ids, c)
            print(f"trace: {path} (simlab trace show {path})", file=sys.stderr)


def _color() -> bool:
    import os

    return "NO_COLOR" not in os.environ


def _run_json(info, prompt: str, run) -> dict:
    from dataclasses import asdict

    return {
        "model": info.as_dict(),
        "params": asdict(run.params),
        "prompt": prompt,
        "prompt_tokens": len(run.prompt_ids),
        "stats": {**asdict(run.stats), "tokens_per_second": run.stats.tokens_per_second},
        "completions": [
            {
                "index": c.index, "seed": c.seed, "text": c.text, "finish_reason": c.finish_reason,
                "stop_string": c.stop_string, "truncated_to_context": c.truncated_to_context,
                **({"server": c.server} if c.server else {}),
                "tokens": [
                    {"id": t.id, "text": t.text, "logprob": t.logprob,
                     "top": [{"id": i, "text": s, "logprob": lp} for i, s, lp in t.top]}
                    for t in c.tokens
                ],
            }
            for c in run.completions
        ],
    }


def cmd_doctor(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from simlab.doctor import checks, report

    settings = _settings(args)
    if args.sessions_dir:
        settings = replace(settings, sessions_dir=args.sessions_dir)
    rows = checks(settings, load=args.load, say=lambda m: print(m, file=sys.stderr, flush=True))
    print(report(rows))
    return 1 if any(status == "fail" for status, _, _ in rows) else 0


def cmd_models(args: argparse.Namespace) -> int:
    from simlab.catalog import list_models

    if args.load:
        info = _load(args, args.load).info
        if args.json:
            print(json.dumps(info.as_dict(), indent=2))
        else:
            for key, value in info.as_dict().items():
                print(f"{key:>14}: {value}")
        return 0
    settings = _settings(args)
    rows = list_models(settings)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['spec']:<44} {row['kind']:<9} {row['state']}")
    return 0
