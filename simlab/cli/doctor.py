"""`simlab doctor`: what this installation has and whether each part works, one line each."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from simlab.cli.common import add_model_flags, say, settings_of
from simlab.engine.open import open_engine
from simlab.engine.params import SamplingParams
from simlab.engine.probe import probe
from simlab.errors import SimlabError
from simlab.models import catalog, gguf

Check = tuple[str, str, str]  # (status: ok | warn | fail, what, detail)


def _writable(folder: Path) -> tuple[bool, str]:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
            pass
        return True, f"{folder} (writable)"
    except OSError as exc:
        return False, f"{folder}: cannot write there ({exc.strerror or exc})"


def add_command(commands) -> None:
    doctor = commands.add_parser("doctor", help="what this installation has, and whether each part works")
    doctor.add_argument("--load", action="store_true", help="also load the model and generate three tokens")
    doctor.add_argument("--sessions-dir", help="the sessions folder to check (default ./sessions)")
    add_model_flags(doctor)
    doctor.set_defaults(run=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    if args.sessions_dir:
        settings = replace(settings, sessions_dir=args.sessions_dir)
    rows = checks(settings, load=args.load, say=say)
    print(report(rows))
    return 1 if any(status == "fail" for status, _, _ in rows) else 0


def checks(settings, load: bool = False, say: Callable[[str], None] = lambda m: None) -> list[Check]:
    from simlab import __version__

    out: list[Check] = [
        ("ok", "simlab", f"{__version__} on Python {platform.python_version()} ({sys.executable})")
    ]
    try:
        import torch
        import transformers

        out.append(("ok", "torch", f"{torch.__version__}, {torch.get_num_threads()} threads"))
        out.append(("ok", "transformers", transformers.__version__))
    except Exception as exc:  # an install problem is exactly what doctor is for
        out.append(("fail", "torch/transformers", f"cannot be imported: {exc}; reinstall with `make run`"))
        return out
    out.append(_device(settings))
    out.append(_kernel(settings.weights))
    out += _folders(settings)
    out.append(_embedded(settings))
    offline = settings.offline or os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
    network = (
        "offline: only local files and the Hugging Face cache"
        if offline
        else ("hub downloads allowed (HF_HUB_OFFLINE=1 or --offline to forbid)")
    )
    out.append(("ok", "network", network))
    if settings.backend == "openai":
        try:
            server = open_engine(replace(settings, tokenizer="none"))  # the server, then what counts
            out.append(("ok", "server", f"{settings.base_url} serves {server.info.name}"))
            out += _server_tokens(settings, server)
            out += _probed(server)
        except SimlabError as exc:
            out.append(("fail", "server", str(exc)))
    if load:
        out.append(_generation(settings, say))
    return out


def _server_tokens(settings, server) -> list[Check]:
    """What counts the server's tokens (engine.tokenizers) and what its context is."""
    try:
        engine = open_engine(settings) if settings.tokenizer != "none" else server
    except SimlabError as exc:
        tokens, engine = ("fail", "tokens", f"--tokenizer {settings.tokenizer}: {exc}"), server
    else:
        tried = "; ".join(engine.tokenizer_tried)
        if engine.tokenizer is None:
            tokens = (
                "warn",
                "tokens",
                f"not counted here ({tried or 'none found'}); give --tokenizer ID|FOLDER",
            )
        else:
            tokens = (
                "ok",
                "tokens",
                f"counted by {engine.info.tokenizer}" + (f" ({tried})" if tried else ""),
            )
    info = engine.info
    if info.context_from:
        context = ("ok", "context", f"{info.context_length} tokens (from {info.context_from})")
    else:
        context = (
            "warn",
            "context",
            "the server does not say; give --context N so the chat slides before it",
        )
    return [tokens, context]


def _probed(server) -> list[Check]:
    """What the server does, found with real requests (engine.probe), one line a feature."""
    try:
        found = probe(server)
    except SimlabError as exc:
        return [("fail", "probe", str(exc))]
    return [row for row in found.rows() if row[1] not in ("tokens counted by", "context")]


def _device(settings) -> Check:
    from simlab.models.device import dtype_name, pick_device, pick_dtype

    try:
        device = pick_device(settings.device)
        dtype = pick_dtype(settings.dtype, device)
    except Exception as exc:
        return ("fail", "device", str(exc))
    note = " (measured on this CPU)" if device.type == "cpu" and settings.dtype == "auto" else ""
    return (
        "ok",
        "device",
        f"{device} {dtype_name(dtype)}{note}; settings device={settings.device} dtype={settings.dtype}",
    )


def _kernel(weights: str) -> Check:
    """simlab's own kernel for GGUF weights: built here (once), or why torch's int4 kernel stands in;
    how it rounds activations (`weights`: gguf-a8 to 8 bits)."""
    from simlab.models import native

    if native.library() is not None:
        rounded = "8 bits (gguf-a8)" if weights == "gguf-a8" else "about 15 bits (two 8-bit levels)"
        return (
            "ok",
            "gguf kernel",
            f"simlab's own, {native.why()}; float32 activations rounded to {rounded}",
        )
    if native.why() == "SIMLAB_NATIVE=0":
        return ("warn", "gguf kernel", "torch's int4 kernel: simlab's own is turned off by SIMLAB_NATIVE=0")
    return (
        "warn",
        "gguf kernel",
        f"torch's int4 kernel instead of simlab's own ({native.why()}): GGUF replies decode slower; "
        "install a C compiler (cc) to build it",
    )


def _folders(settings) -> list[Check]:
    home_ok, home = _writable(settings.home)
    sessions_ok, sessions = _writable(Path(settings.sessions_dir))
    advice = "" if sessions_ok else "; chats cannot be saved there: use --sessions-dir or SIMLAB_SESSIONS"
    return [
        ("ok" if home_ok else "fail", "simlab home", home),
        ("ok" if sessions_ok else "warn", "sessions folder", sessions + advice),
    ]


def _embedded(settings) -> Check:
    folder = gguf.cache_folder("embedded", settings)
    marker = gguf.read_marker(folder)
    if not marker:
        return (
            "warn",
            "embedded model",
            "not converted yet: the first `simlab` reads it into a cache (about 30 s)",
        )
    variants = [p.name for p in folder.iterdir() if p.is_dir() and gguf.dtype_variant(folder, p.name)]
    extra = f"; also kept in {', '.join(variants)}" if variants else ""
    return ("ok", "embedded model", f"{catalog.kept(marker, settings)} at {folder}{extra}")


def _generation(settings, say: Callable[[str], None]) -> Check:
    try:
        engine = open_engine(settings, progress=say)
        [c] = engine.generate("The capital of France is", SamplingParams(temperature=0, max_new_tokens=3))
    except Exception as exc:
        return ("fail", "generation", f"{settings.model}: {exc}")
    info = engine.info
    weights = f", weights {info.weights}" if info.weights != "float" else ""
    return ("ok", "generation", f"{info.name}: {c.text!r} ({info.device}, {info.dtype}{weights})")


def report(rows: list[Check]) -> str:
    marks = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}
    return "\n".join(f"{marks[status]}  {what:<17} {detail}" for status, what, detail in rows)
