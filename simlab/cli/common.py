"""What the commands share: the parser class, flag groups (model, sampling, trace), settings, loading
an engine, opening the sessions folder, and the end signals. Imports no torch: the parser is built,
and every flag checked, before a model loads."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simlab.config import Settings, load_settings, validate_device
from simlab.engine.params import KNOBS, SamplingParams, decode_escapes
from simlab.errors import EXIT_BAD_INPUT, BadInput, NeedsLocalModel, needs_local
from simlab.session.store import SessionStore
from simlab.trace.config import TraceConfig, from_flags


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the command and how to get help, and a flag is
    only ever its whole name (`--mode` is not taken as an abbreviation of `--model`)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message} (see {self.prog} --help)\n")


def say(message: str) -> None:
    """A line for the user that is not the command's output (stderr)."""
    print(message, file=sys.stderr, flush=True)


def utf8(text: str, what: str) -> str:
    """The text as given, or BadInput where it holds bytes that are not UTF-8 (Python hands such
    bytes of an argument or of stdin on as lone surrogates, which no tokenizer can encode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadInput(
            f"{what}: byte {exc.object[exc.start].encode('utf-8', 'surrogateescape')!r} at character "
            f"{exc.start} is not UTF-8; give the text as UTF-8"
        ) from None
    return text


def color_on(stream=None) -> bool:
    stream = stream or sys.stdout
    return "NO_COLOR" not in os.environ and stream.isatty()


# -- flag groups ------------------------------------------------------------------------------


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", "-m", help="'embedded' (default), a Hugging Face id, a folder or a .gguf file"
    )
    group.add_argument("--device", help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    group.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="default auto")
    group.add_argument(
        "--weights",
        choices=["auto", "float", "int8", "int4", "gguf", "gguf-a8"],
        help="how the linear layers keep their weights: float, int8/int4 weight-only on the CPU, or gguf "
        "(a GGUF's own quantization; auto picks it for a GGUF on the CPU, else float); gguf-a8: gguf with "
        "activations rounded to 8 bits as llama.cpp does (faster products, further from float)",
    )
    group.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="never download; use only local files and the Hugging Face cache",
    )
    group.add_argument(
        "--allow-pickle",
        action="store_true",
        default=None,
        help="allow pickle (.bin) weights, which can run code when loaded",
    )
    group.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run model code shipped with a hub model (only for sources you trust)",
    )
    group.add_argument(
        "--backend",
        choices=["local", "openai"],
        help="local (default): the model runs here; openai: an OpenAI-compatible server "
        "(vLLM, llama.cpp, TGI, transformers serve) at --base-url",
    )
    group.add_argument("--base-url", help="the server's /v1 root, e.g. http://127.0.0.1:8000/v1")
    group.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable holding the server's API key (default SIMLAB_API_KEY)",
    )
    group.add_argument(
        "--concurrency",
        metavar="N",
        help="requests in flight at once to a server (default 4; 1 makes seeds repeat on "
        "servers that share one random generator, such as transformers serve)",
    )
    group.add_argument(
        "--tokenizer",
        metavar="WHICH",
        help="what counts a server's tokens: auto (default: the server's /tokenize, else tiktoken for "
        "an OpenAI model name), server, tiktoken[:ENCODING], none, or a Hugging Face tokenizer id or folder",
    )
    group.add_argument(
        "--context",
        metavar="N",
        help="a server's context in tokens, when it does not say (the conversation slides to fit it)",
    )


def add_sampling_flags(group, defaults: bool) -> None:
    """One flag per sampling knob; with defaults each holds the knob's default, else None unless
    given (so the defaults come from the persona or the spec)."""
    for knob in KNOBS:
        names = [knob.flag] + ([knob.short] if knob.short else [])
        text = f"{knob.help} (default {knob.default})" if defaults else knob.help
        group.add_argument(
            *names, type=knob.type, dest=knob.field, default=knob.default if defaults else None, help=text
        )


def sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling knobs given on the command line, by SamplingParams field."""
    return {k.field: getattr(args, k.field) for k in KNOBS if getattr(args, k.field, None) is not None}


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    """The full parameters of `simlab generate` (validated here, before any model loads)."""
    stops = tuple(decode_escapes(s) for s in args.stop)
    return SamplingParams(**sampling_overrides(args), seed=args.seed, stop=stops)


def add_session_flags(parser: argparse.ArgumentParser, seed_help: str) -> None:
    """What `chat` and `loom` both take: sampling over the persona's, the first seed, model, trace."""
    group = parser.add_argument_group("sampling (default: the persona's)")
    add_sampling_flags(group, defaults=False)
    group.add_argument("--seed", type=int, help=seed_help)
    add_steer_flags(parser)
    add_model_flags(parser)
    add_trace_flags(parser)


def add_steer_flags(parser: argparse.ArgumentParser) -> None:
    """--steer (repeatable) and --steer-positions: steering vectors added to the residual stream."""
    group = parser.add_argument_group("steering")
    group.add_argument(
        "--steer",
        action="append",
        default=[],
        metavar="NAME[:STRENGTH][@LAYERS]",
        help="add a steering vector (simlab steer list) times STRENGTH (default 1) at its blocks' "
        "outputs, or at LAYERS (6-10, 4,6,8); repeatable: vectors add up; several strengths "
        "(keeper:0,0.5,1) are one sibling each, all on one seed",
    )
    group.add_argument(
        "--steer-positions",
        choices=("all", "prompt", "reply"),
        default="all",
        help="where the vectors are added: every position (default, as llama.cpp and repeng), the "
        "prompt's only, or the reply's only",
    )


def add_trace_flags(parser: argparse.ArgumentParser):
    """The --trace flags, in their own group (returned, for a command's own trace flags)."""
    group = parser.add_argument_group("residual-stream trace")
    group.add_argument("--trace", action="store_true", help="record the residual stream of each reply")
    group.add_argument(
        "--trace-points",
        metavar="LIST",
        default="embed,blocks,norm",
        help="what to record: any of embed (input to block 0), blocks, norm (final norm output)",
    )
    group.add_argument(
        "--trace-layers", metavar="LIST", help="blocks to record: all (default) or e.g. 0,4,8-11"
    )
    group.add_argument("--trace-prompt", action="store_true", help="also record every prompt position")
    group.add_argument("--trace-dtype", choices=["bfloat16", "float16"], default="bfloat16")
    return group


def trace_config(args: argparse.Namespace) -> TraceConfig | None:
    if not getattr(args, "trace", False):
        return None
    return from_flags(args.trace_points, args.trace_layers, args.trace_prompt, args.trace_dtype)


def make_tracer(config: TraceConfig | None, settings: Settings | None = None):
    """A trace.record.Tracer for the config (None when not tracing); imports torch only when tracing.
    A server cannot be traced: that fails here, before anything loads."""
    if config is None:
        return None
    if settings is not None and settings.backend == "openai":
        raise needs_local("--trace (the residual stream)")
    from simlab.trace.record import Tracer

    return Tracer(config, say=say)


# -- settings, engines, sessions --------------------------------------------------------------


def settings_flags(args: argparse.Namespace) -> dict:
    """The model flags as load_settings takes them."""
    return dict(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        weights=args.weights,
        offline=args.offline,
        allow_pickle=args.allow_pickle,
        backend=args.backend,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        concurrency=args.concurrency,
        tokenizer=getattr(args, "tokenizer", None),
        context=getattr(args, "context", None),
    )


def settings_of(args: argparse.Namespace) -> Settings:
    if getattr(args, "device", None) is not None:
        validate_device(args.device)
    return load_settings(**settings_flags(args))


def refuse_idle_flags(args: argparse.Namespace, settings: Settings) -> None:
    """A run all on a server takes no --weights, --device or --dtype: they would do nothing."""
    given = [
        name for name in ("weights", "device", "dtype") if getattr(args, name, None) not in (None, "auto")
    ]
    if settings.backend == "openai" and given:
        raise NeedsLocalModel(
            f"--{given[0]} {getattr(args, given[0])} is for a model run here; a run on a server (backend "
            f"openai) has the server's own weights and device: drop --{given[0]}, or use --backend local"
        )


def load_engine(
    args: argparse.Namespace,
    settings: Settings | None = None,
    spec: str | None = None,
    quiet: bool = False,
    progress: Callable[[str], None] | None = None,
):
    """The engine (local or remote) for the model flags; the loader's steps go to `progress`
    (default: printed; quiet: nowhere)."""
    from simlab.engine.open import open_engine

    return open_engine(
        settings or settings_of(args),
        spec,
        trust_remote_code=args.trust_remote_code,
        progress=progress or ((lambda message: None) if quiet else say),
    )


def add_sessions_dir(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--sessions-dir", help="the sessions folder (default ./sessions, or SIMLAB_SESSIONS)")
    return parser


def open_store(args: argparse.Namespace, settings: Settings | None = None) -> SessionStore:
    folder = getattr(args, "sessions_dir", None) or (settings or load_settings()).sessions_dir
    return SessionStore(Path(folder))


def warn(problems) -> None:
    for problem in problems:
        say(f"simlab: warning: {problem}")


# -- signals ----------------------------------------------------------------------------------


@contextlib.contextmanager
def on_end_signals(handler: Callable):
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


def signals_interrupt():
    """SIGTERM and SIGHUP stop a command as Ctrl-C does: generate keeps what it wrote, compare keeps
    every finished sample (rerun to resume); the chat REPL handles them itself (cli.chat)."""

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    return on_end_signals(interrupt)
