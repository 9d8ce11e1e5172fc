"""`simlab doctor`: what this installation has and whether each part works, one line each."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Callable

Check = tuple[str, str, str]  # (status: ok | warn | fail, what, detail)


def _writable(folder: Path) -> tuple[bool, str]:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
            pass
        return True, f"{folder} (writable)"
    except OSError as exc:
        return False, f"{folder}: cannot write there ({exc.strerror or exc})"


def checks(settings, load: bool = False, say: Callable[[str], None] = lambda m: None) -> list[Check]:
    from simlab import __version__
    from simlab.models import gguf

    out: list[Check] = [("ok", "simlab", f"{__version__} on Python {platform.python_version()} ({sys.executable})")]
    try:
        import torch
        import transformers

        out.append(("ok", "torch", f"{torch.__version__}, {torch.get_num_threads()} threads"))
        out.append(("ok", "transformers", transformers.__version__))
    except Exception as exc:  # an install problem is exactly what doctor is for
        out.append(("fail", "torch/transformers", f"cannot be imported: {exc}; reinstall with `make run`"))
        return out
    from simlab.models.device import dtype_name, pick_device, pick_dtype

    try:
        device = pick_device(settings.device)
        dtype = pick_dtype(settings.dtype, device)
        note = " (measured on this CPU)" if device.type == "cpu" and settings.dtype == "auto" else ""
        out.append(("ok", "device", f"{device} {dtype_name(dtype)}{note}; settings device={settings.device} "
                                    f"dtype={settings.dtype}"))
    except Exception as exc:
        out.append(("fail", "device", str(exc)))
    home_ok, home = _writable(settings.home)
    out.append(("ok" if home_ok else "fail", "simlab home", home))
    sessions_ok, sessions = _writable(Path(settings.sessions_dir))
    out.append(("ok" if sessions_ok else "warn", "sessions folder", sessions + ("" if sessions_ok else
                "; chats cannot be saved there: use --sessions-dir or SIMLAB_SESSIONS")))
    folder = gguf.cache_folder("embedded", settings)
    marker = gguf.read_marker(folder)
    if marker:
        variants = [p.name for p in folder.iterdir() if p.is_dir() and gguf.dtype_variant(folder, p.name)]
        extra = f"; also kept in {', '.join(variants)}" if variants else ""
        out.append(("ok", "embedded model", f"converted at {folder}{extra}"))
    else:
        out.append(("warn", "embedded model", "not converted yet: the first `simlab` converts it (under a minute)"))
    offline = settings.offline or os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
    out.append(("ok", "network", "offline: only local files and the Hugging Face cache" if offline
                else "hub downloads allowed (HF_HUB_OFFLINE=1 or --offline to forbid)"))
    if settings.backend == "openai":
        from simlab.backends import open_engine
        from simlab.errors import SimlabError

        try:
            engine = open_engine(settings)
            out.append(("ok", "server", f"{settings.base_url} serves {engine.info.name}"))
        except SimlabError as exc:
            out.append(("fail", "server", str(exc)))
    if load:
        try:
            from simlab.backends import open_engine
            from simlab.params import SamplingParams

            engine = open_engine(settings, progress=say)
            [c] = engine.generate("The capital of France is", SamplingParams(temperature=0, max_new_tokens=3))
            out.append(("ok", "generation", f"{engine.info.name}: {c.text!r} "
                                            f"({engine.info.device}, {engine.info.dtype})"))
        except Exception as exc:
            out.append(("fail", "generation", f"{settings.model}: {exc}"))
    return out


def report(rows: list[Check]) -> str:
    marks = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}
    return "\n".join(f"{marks[status]}  {what:<16} {detail}" for status, what, detail in rows)
