"""Steering as a variant dimension of a compare spec: `steer: {vector: NAME, strength: [0, 1, 2],
layers: 6-10, positions: all, toward: PERSONA}` turns each variant into one per strength, sharing
seeds (so sample i of every strength is a pair), strength 0 the variant unsteered; each variant's
strengths make one dose-response group (compare.dose), measured toward PERSONA's own prompt (by
default the persona the vector was derived toward, when there is one). Read with the spec (the
vector's file checked then); what a reply adds is made when the engine is there."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from simlab.engine.steering import POSITIONS
from simlab.errors import SimlabError, SpecError
from simlab.steer.use import steering_of, uses_of

STEER_KEYS = {"vector", "strength", "layers", "positions", "toward"}


@dataclass(frozen=True)
class Dose:
    """One variant's strengths: the variant's name at each (strength 0: the variant itself, whether
    or not the spec asked for it), the vector as used, and the persona whose prompt the steering is
    measured against (None: no prompt-equivalent strength)."""

    base: str
    strengths: tuple[tuple[float, str], ...]
    use: Any  # steer.use.Use
    toward: Any = None  # persona.Persona
    positions: str = "all"


def expand(variants: list, raw: Any, where: str, find=None) -> tuple[list, tuple[Dose, ...]]:
    """Each variant once per strength (`NAME` at strength 0, always there as the baseline, `NAME
    VECTOR:S` otherwise), and each variant's dose-response group. `find`: a persona by name (for
    `toward`)."""
    if raw is None:
        return variants, ()
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
    ranges = layers if isinstance(layers, list) else [layers]  # several: a dose-response each
    if not ranges or len({str(r) for r in ranges}) < len(ranges):
        raise SpecError(f"{where}: steer: layers: blocks (6-10), or a list of different ones ([6-10, 12])")
    uses = []
    for blocks in ranges:
        try:
            [use] = uses_of([raw["vector"] + (f"@{blocks}" if blocks is not None else "")])
        except SimlabError as exc:
            raise SpecError(f"{where}: steer: {exc}") from None
        uses.append(use)
    toward = _toward(raw.get("toward"), uses[0], where, find)
    out, doses = [], []
    for variant in variants:
        out.append(variant)  # strength 0, the baseline, first whether asked for or not
        for use in uses:
            names = [(0.0, variant.name)]
            for strength in sorted(set(strengths) - {0}):
                steered = use.at(float(strength))
                name = f"{variant.name} {steered.label()}"
                out.append(replace(variant, name=name, steer=(*variant.steer, steered), positions=positions))
                names.append((float(strength), name))
            doses.append(Dose(variant.name, tuple(names), use, toward, positions))
    return out, tuple(doses)


def _toward(name: Any, use, where: str, find):
    """The persona steering is measured against: the one named, else the vector's `to` persona
    where it loads, else None."""
    if name is not None and not isinstance(name, str):
        raise SpecError(f"{where}: steer: toward: a persona name")
    if find is None:
        return None
    wanted = name or use.vector.meta.get("to")
    if not isinstance(wanted, str):
        return None
    try:
        return find(wanted)
    except SimlabError as exc:
        if name is None:  # the vector's own persona is not here: no equivalent strength, said later
            return None
        raise SpecError(f"{where}: steer: toward: {exc}") from None


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
