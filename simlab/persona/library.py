"""The persona library: the shipped personas and the user's own (which override them), by name."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from simlab.config import simlab_home
from simlab.errors import PersonaError
from simlab.persona.schema import Persona, load_file


def shipped_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "personas"


def user_dir() -> Path:
    return simlab_home() / "personas"


def library() -> dict[str, Path]:
    """Persona name -> file; the simlab home's personas override shipped ones of the same name."""
    found: dict[str, Path] = {}
    for folder in (shipped_dir(), user_dir()):
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix in (".yaml", ".yml") and path.is_file():
                    found[path.stem] = path
    return found


def is_path(spec: str) -> bool:
    return "/" in spec or spec.endswith((".yaml", ".yml", ".json")) or spec.startswith(".")


def find(spec: str) -> Persona:
    """A persona by library name, or from a file path ('./mine.yaml')."""
    if is_path(spec):
        return load_file(spec)
    files = library()
    if spec not in files:
        known = ", ".join(sorted(files)) or "none"
        raise PersonaError(f"unknown persona {spec!r}; known: {known} (or give a path to a YAML file)")
    persona = load_file(files[spec])
    return persona if persona.name == spec else replace(persona, name=spec)
