"""What a run adds to the residual stream: steering vectors (as plain arrays, read from their files
by the steer room) times their strengths, at blocks' outputs, at the prompt's positions, the
reply's or both. models.steering puts them into the model; no torch here until `adds`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

POSITIONS = ("all", "prompt", "reply")  # where a run adds: every position, the prompt's, the reply's


@dataclass(frozen=True)
class Term:
    """One vector at one strength on some of its blocks."""

    name: str
    digest: str  # sha256 of its directions (steer.vector.SteerVector.digest)
    strength: float
    directions: Mapping[int, np.ndarray] = field(repr=False)  # block -> (hidden,), only those applied

    def record(self) -> dict:
        return {
            "vector": self.name,
            "sha256": self.digest,
            "strength": self.strength,
            "blocks": sorted(self.directions),
        }


@dataclass(frozen=True)
class Steering:
    """The vectors a run adds (several add up, block by block) and at which positions."""

    terms: tuple[Term, ...]
    positions: str = "all"

    @property
    def on_prompt(self) -> bool:
        return self.positions in ("all", "prompt")

    @property
    def on_reply(self) -> bool:
        return self.positions in ("all", "reply")

    def adds(self, dtype, device) -> dict:
        """Block -> the (hidden,) tensor added to its output: each term's direction times its strength,
        summed in float32 in the terms' order, then cast to the model's dtype once."""
        import torch

        total: dict[int, np.ndarray] = {}
        for term in self.terms:
            for block, direction in term.directions.items():
                scaled = np.float32(term.strength) * np.asarray(direction, dtype=np.float32)
                total[block] = total[block] + scaled if block in total else scaled
        return {block: torch.from_numpy(v).to(device=device, dtype=dtype) for block, v in total.items()}

    @property
    def cache_key(self) -> str | None:
        """What a kept cache built under this steering is known by: the same vectors, strengths and
        blocks at every position (a cache steered on some positions only is never kept: None)."""
        if self.positions != "all":
            return None
        return json.dumps(self.record()["terms"], sort_keys=True)

    @property
    def prompt_key(self) -> str | None:
        """What its prompt's cache is known by (None: the prompt goes in unsteered)."""
        return json.dumps(self.record()["terms"], sort_keys=True) if self.on_prompt else None

    def record(self) -> dict:
        """What a node keeps of it: each vector's digest, strength and blocks, and the positions."""
        return {"terms": [t.record() for t in self.terms], "positions": self.positions}


def uniform(rows) -> tuple[Steering | None, list | None]:
    """A run's steering as given: one for every row, or one per row (siblings at different
    strengths). (the one, None) when every row's is the same; (None, the rows) when they differ."""
    if not isinstance(rows, (list, tuple)):
        return rows, None
    records = {json.dumps(r.record(), sort_keys=True) if r else None for r in rows}
    return (rows[0], None) if len(records) == 1 else (None, list(rows))


def row_adds(rows, dtype, device) -> dict:
    """Block -> (n, 1, H): what each row adds at the reply's positions (zeros where a row adds
    nothing at that block), for siblings steered differently that decode as one batch."""
    import torch

    each = [r.adds(dtype, device) if r is not None and r.on_reply else {} for r in rows]
    blocks = sorted({b for adds in each for b in adds})
    width = next(iter(next(a for a in each if a).values())).shape[-1] if blocks else 0
    zero = torch.zeros(width, dtype=dtype, device=device)
    return {b: torch.stack([adds.get(b, zero) for adds in each]).unsqueeze(1) for b in blocks}
