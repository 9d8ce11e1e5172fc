"""`--steer NAME[:STRENGTH][@LAYERS]` (repeatable) and `/steer` -> the Steering a run adds: each
vector read from the library (or a file) when the flag is read, checked against the model and cut
to the blocks asked for when a run starts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from simlab.engine.steering import POSITIONS, Steering, Term
from simlab.errors import SteerError, needs_local
from simlab.steer import library
from simlab.steer.vector import SteerVector, parse_use


@dataclass(frozen=True)
class Use:
    """One vector as the user asked for it: its name, strength and blocks (None: all it has)."""

    name: str
    strength: float
    blocks: tuple[int, ...] | None
    vector: SteerVector
    sweep: tuple[float, ...] | None = None  # a strength a sibling (`keeper:0,0.5,1,2`)

    def label(self) -> str:
        """As --steer writes it: `keeper:2@12`, `keeper:0.5@10-12`, `keeper:0,1,2`."""
        blocks = f"@{runs(self.blocks)}" if self.blocks is not None else ""
        strengths = ",".join(f"{x:g}" for x in self.sweep) if self.sweep else f"{self.strength:g}"
        return f"{self.name}:{strengths}{blocks}"

    def at(self, strength: float) -> Use:
        return replace(self, strength=strength, sweep=None)


def no_server():
    """The one line a server's steering is refused with, naming the servers that could steer."""
    return needs_local(
        "--steer (adding to the residual stream; servers: vLLM only with the vllm-lens plugin, "
        "llama.cpp's llama-server only at launch with --control-vector)"
    )


def uses_of(specs: Sequence[str]) -> list[Use]:
    """Each spec read and its vector file checked (no model needed yet)."""
    uses = []
    for spec in specs:
        name, strengths, blocks = parse_use(spec)
        sweep = strengths if len(strengths) > 1 else None
        uses.append(Use(name, strengths[0], blocks, library.find(name), sweep))
    if sum(use.sweep is not None for use in uses) > 1:
        raise SteerError("--steer: give several strengths (one a sibling) to one vector only")
    return uses


def sweep_of(uses: Sequence[Use]) -> int:
    """How many siblings the uses' strengths ask for (1: no sweep)."""
    return next((len(use.sweep) for use in uses if use.sweep), 1)


def steerings_of(uses: Sequence[Use], engine, n: int, positions: str = "all"):
    """What n siblings add: one Steering for all of them, or (a sweep: `keeper:0,0.5,1,2`) one a
    sibling, each at its strength, which the engine decodes as one batch."""
    k = sweep_of(uses)
    if k == 1:
        return steering_of(uses, engine, positions)
    if n != k:
        raise SteerError(f"--steer: {k} strengths are one a sibling; sample {k} siblings (-n {k}, /n {k})")
    swept = next(i for i, use in enumerate(uses) if use.sweep)
    rows = []
    for strength in uses[swept].sweep:
        row = [*uses[:swept], uses[swept].at(strength), *uses[swept + 1 :]]
        rows.append(steering_of([u for u in row if u.strength != 0], engine, positions))
    return rows


def steering_of(uses: Sequence[Use], engine, positions: str = "all") -> Steering | None:
    """What a run on `engine` adds for these uses (None for none); a vector made for another model,
    a block it has no direction for, or a server is refused in one line."""
    if not uses:
        return None
    if not engine.capabilities.local:
        raise no_server()
    if positions not in POSITIONS:
        raise SteerError(f"--steer-positions {positions}: use one of {', '.join(POSITIONS)}")
    info = engine.info
    terms = []
    for use in uses:
        vector = use.vector
        vector.fit(info.layers, info.hidden_size, info.name)
        chosen = vector.layers if use.blocks is None else list(use.blocks)
        missing = [b for b in chosen if b not in vector.directions]
        if missing:
            raise SteerError(
                f"--steer {use.label()}: {use.name} has no direction for block {missing[0]} (it has "
                f"{', '.join(map(str, vector.layers))})"
            )
        with np.errstate(over="ignore"):
            too_big = [
                b for b in chosen if not np.isfinite(np.float32(use.strength) * vector.directions[b]).all()
            ]
        if too_big:
            raise SteerError(
                f"--steer {use.label()}: strength {use.strength:g} times block {too_big[0]}'s direction "
                "overflows float32; give a smaller strength"
            )
        terms.append(Term(use.name, vector.digest, use.strength, {b: vector.directions[b] for b in chosen}))
    return Steering(tuple(terms), positions)


def steering_recorded(record: dict | None, engine) -> Steering | None:
    """The Steering a node records (`steer`), again: each vector found by its name in the library
    (or its path) and checked to be the very one by its sha256, so a replay adds what the reply had."""
    if not record:
        return None
    terms = []
    for use in uses_recorded(record):
        terms.extend(steering_of([use], engine, "all").terms)
    return Steering(tuple(terms), str(record.get("positions", "all")))


def uses_recorded(record: dict | None) -> list[Use]:
    """What a node's `steer` record names, each vector read and checked by its sha256 (no model
    needed: a replay says a vector is missing or changed before it loads one)."""
    uses = []
    for term in (record or {}).get("terms") or ():
        name = str(term.get("vector", ""))
        try:
            vector = library.find(name)
        except SteerError as exc:
            raise SteerError(f"this reply was steered with {name!r}, which is not here: {exc}") from None
        if vector.digest != term.get("sha256"):
            raise SteerError(
                f"this reply was steered with a vector {name!r} whose directions differ from the one "
                f"now called {name!r} (sha256 {str(term.get('sha256'))[:12]} vs {vector.digest[:12]}); "
                "put the original back in the library to replay it"
            )
        blocks = [int(b) for b in term.get("blocks") or vector.layers]
        uses.append(
            Use(name, float(term.get("strength", 1.0)), tuple(blocks), vector)
        )  # (one strength a reply)
    return uses


def runs(blocks: Sequence[int]) -> str:
    """(4, 5, 6, 9) -> '4-6,9'."""
    runs, start = [], None
    for i, block in enumerate(blocks):
        start = block if start is None else start
        if i + 1 == len(blocks) or blocks[i + 1] != block + 1:
            runs.append(f"{start}" if start == block else f"{start}-{block}")
            start = None
    return ",".join(runs)
