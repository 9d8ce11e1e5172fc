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

    def record(self) -> dict:
        """What a node keeps of it: each vector's digest, strength and blocks, and the positions."""
        return {"terms": [t.record() for t in self.terms], "positions": self.positions}
