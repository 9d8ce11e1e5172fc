"""Steering as a variant dimension of a compare spec: `steer: {vector: NAME, strength: [0, 1, 2],
layers: 6-10, positions: all}` turns each variant into one per strength, sharing seeds (so sample i
of every strength is a pair), strength 0 the variant unsteered. Read with the spec (the vector's
file checked then); what a reply adds is made when the engine is there."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from simlab.engine.steering import POSITIONS
from simlab.errors import SimlabError, SpecError
from simlab.steer.use import steering_of, uses_of

STEER_KEYS = {"vector", "strength", "layers", "positions"}


def expand(variants: list, raw: Any, where: str) -> list:
    """Each variant once per strength (`NAME` at strength 0, `NAME VECTOR:S` otherwise)."""
    if raw is None:
        return variants
    if not isinstance(raw, dict) or not isinstance(raw.get("vector"), str):
        raise SpecError(f"{where}: steer: give {{vector: NAME, strength: [0, 1, 2]}} (simlab steer list)")
    unknown = set(raw) - STEER_KEYS
    if unknown:
        raise SpecError(
            f"{where}: steer: unknown key {sorted(unknown)[0]!r}; use {', '.join(sorted(STEER_KEYS))}"
        )
    strengths = raw.get("strength", [1])
    strengths = strengths if isinstance(strengths, list) else [strengths]
    if not strengths or not all(_number(s) for s in strengths) or len(set(strengths)) < len(strengths):
        raise SpecError(f"{where}: steer: strength: a number or a list of different numbers")
    positions = raw.get("positions", "all")
    if positions not in POSITIONS:
        raise SpecError(f"{where}: steer: positions: one of {', '.join(POSITIONS)}")
    layers = raw.get("layers")
    spec = raw["vector"] + (f"@{layers}" if layers is not None else "")
    try:
        [use] = uses_of([spec])
    except SimlabError as exc:
        raise SpecError(f"{where}: steer: {exc}") from None
    out = []
    for variant in variants:
        for strength in strengths:
            if strength == 0:
                out.append(variant)
                continue
            steered = use.at(float(strength))
            out.append(
                replace(
                    variant, name=f"{variant.name} {steered.label()}", steer=(steered,), positions=positions
                )
            )
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def steering_for(variant, engine):
    """What a variant's replies add (engine.steering.Steering), or None."""
    return steering_of(list(variant.steer), engine, variant.positions) if variant.steer else None


def record(variant) -> list[dict]:
    """A variant's steering as its fingerprint reads it: each vector's digest, strength and blocks."""
    return [
        {"sha256": u.vector.digest, "strength": u.strength, "blocks": list(u.blocks or u.vector.layers)}
        for u in variant.steer
    ] + ([{"positions": variant.positions}] if variant.steer else [])
