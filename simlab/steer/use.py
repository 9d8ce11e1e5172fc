"""`--steer NAME[:STRENGTH][@LAYERS]` (repeatable) -> the Steering a run adds, each vector read from
the library (or a file), checked against the model, cut to the blocks asked for."""

from __future__ import annotations

from collections.abc import Sequence

from simlab.engine.steering import POSITIONS, Steering, Term
from simlab.errors import SteerError, needs_local
from simlab.steer import library
from simlab.steer.vector import parse_use


def steering_for(specs: Sequence[str], engine, positions: str = "all") -> Steering | None:
    """The Steering of the --steer flags on `engine`'s model (None without any); a vector made for
    another model, a block it has no direction for, or a server is refused in one line."""
    if not specs:
        return None
    if not engine.capabilities.local:
        raise needs_local(
            "--steer (adding to the residual stream; servers: vLLM only with the vllm-lens plugin, "
            "llama.cpp's llama-server only at launch with --control-vector)"
        )
    if positions not in POSITIONS:
        raise SteerError(f"--steer-positions {positions}: use one of {', '.join(POSITIONS)}")
    info = engine.info
    terms = []
    for spec in specs:
        name, strength, blocks = parse_use(spec)
        vector = library.find(name)
        vector.fit(info.layers, info.hidden_size, info.name)
        chosen = vector.layers if blocks is None else list(blocks)
        missing = [b for b in chosen if b not in vector.directions]
        if missing:
            raise SteerError(
                f"--steer {spec}: {name} has no direction for block {missing[0]} (it has "
                f"{', '.join(map(str, vector.layers))})"
            )
        terms.append(Term(name, vector.digest, strength, {b: vector.directions[b] for b in chosen}))
    return Steering(tuple(terms), positions)
