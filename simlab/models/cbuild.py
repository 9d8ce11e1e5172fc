"""Building simlab's C sources (qmatmul.c, bpe.c) once per machine with the system C compiler, into
a folder of the simlab home, keyed by the source, the flags, the compiler and the CPU."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path


def cpu_id() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def kernels_folder() -> Path:
    """Where the built libraries are kept: the simlab home's kernels folder."""
    from simlab.config import simlab_home

    return simlab_home() / "kernels"


def build(source: Path, folder: Path, flags: list[str], say: Callable[[], None] | None = None) -> Path:
    """The shared library built from `source` with `flags`, or the one built before (`say`: called
    when it is to be built now). OSError (or subprocess's) when there is no compiler or it fails:
    the caller goes without."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        raise OSError("no C compiler (cc, gcc or clang) on PATH")
    text = source.read_bytes() + " ".join(flags).encode()
    key = hashlib.sha256(text + compiler.encode() + cpu_id().encode() + platform.machine().encode())
    target = folder / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    if say is not None:
        say()
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        built = Path(scratch) / target.name
        command = [compiler, *flags, "-fPIC", "-shared", "-std=c99", str(source), "-o", str(built), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise OSError(f"{Path(compiler).name} failed: {last}")
        os.replace(built, target)
    return target
