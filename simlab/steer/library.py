"""The steering-vector library: `$SIMLAB_HOME/steer/NAME.gguf`, each a file llama.cpp loads as it is.
A NAME anywhere is a library name or a path to a .gguf file."""

from __future__ import annotations

import shutil
from pathlib import Path

from simlab.config import simlab_home
from simlab.errors import SteerError
from simlab.steer.foreign import SUFFIXES, read_torch
from simlab.steer.vector import SteerVector, read

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def folder() -> Path:
    return simlab_home() / "steer"


def names() -> dict[str, Path]:
    found = folder()
    return {p.stem: p for p in sorted(found.glob("*.gguf"))} if found.is_dir() else {}


def is_path(spec: str) -> bool:
    return "/" in spec or spec.endswith(".gguf") or spec.startswith(".")


def path_of(spec: str) -> Path:
    """The file a NAME names: a path as given, else the library's file of that name."""
    if is_path(spec):
        return Path(spec).expanduser()
    known = names()
    if spec not in known:
        listed = ", ".join(known) or "none yet"
        raise SteerError(
            f"no steering vector {spec!r} in {folder()} (known: {listed}); `simlab steer import FILE` adds "
            "one, or give a path to a .gguf control vector"
        )
    return known[spec]


def find(spec: str) -> SteerVector:
    vector = read(path_of(spec))
    return (
        vector
        if vector.meta.get("name")
        else SteerVector(vector.directions, {**vector.meta, "name": spec}, vector.model_hint)
    )


def target(name: str, force: bool) -> Path:
    """Where a vector named `name` goes in the library; a name taken is refused unless `force`."""
    if not name or not set(name) <= NAME_CHARS or name.startswith("."):
        raise SteerError(f"{name!r} is not a usable vector name: use letters, digits, '-', '_' or '.'")
    path = folder() / f"{name}.gguf"
    if path.exists() and not force:
        raise SteerError(
            f"steering vector {name!r} exists ({path}); give another name (steer import: --name NAME), "
            "or --force to replace it"
        )
    return path


def import_file(source: Path, name: str | None, force: bool) -> tuple[str, SteerVector, list[str]]:
    """A control-vector file (repeng's export_gguf, llama.cpp's cvector-generator, simlab's) copied
    into the library as it is, after reading it by llama.cpp's rules; a steering-vectors save (.pt)
    written into one. Also what was left out of it."""
    name = name or source.stem
    left: list[str] = []
    if source.suffix in SUFFIXES:
        vector, left = read_torch(source)
        vector = SteerVector(vector.directions, {**vector.meta, "name": name})
    else:
        vector = read(source)
    path = target(name, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.gguf")
    if source.suffix in SUFFIXES:
        vector.write(tmp)
    else:
        shutil.copyfile(source, tmp)
    tmp.replace(path)
    return name, vector, left
