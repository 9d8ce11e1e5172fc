"""Blind comparison: replies shown without what made them (persona, model, temperature, steering,
seed), in a random order, and the user's ranking of them saved as tags on the nodes; then the
preference rates per variant read back from the tags. No torch.

A comparison `C` puts `blind:C:R` on each reply shown, R its rank (1 the best) or `-` if it was
shown and not ranked. In a session of several trees (a compare sweep's variants) the set compared
is the same sample under each frame: the replies to the same turn with the same seed, one a tree;
elsewhere, the replies beside the cursor (its siblings; under a turn or the frame, its replies).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from simlab.session.tree import Node, Tree, new_id

TAG = re.compile(r"^blind:([0-9a-f]+):(\d+|-)$")


def candidates(tree: Tree, node: Node) -> list[Node]:
    """The replies a blind comparison at `node` shows (in the tree's order): the same sample under
    each variant's frame where the session holds several (a compare sweep), else the replies beside
    the node (under a turn or the frame: its replies)."""
    if node.role == "model" and node.parent is not None:
        shown = [n for n in tree.siblings(node.id) if n.role == "model"]
    else:
        shown = [n for n in tree.children(node.id) if n.role == "model"]
    first = node if node.role == "model" else (shown[0] if shown else None)
    if first is None or first.seed is None or len(tree.roots) < 2 or first.parent is None:
        return shown
    turn, depth = tree.get(first.parent), len(tree.path(first.id))
    paired = [
        other
        for other in tree.nodes.values()  # the same sample (its seed) to the same turn, in another tree
        if other.role == "model"
        and other.seed == first.seed
        and other.id != first.id
        and not other.hidden
        and other.parent is not None
        and tree.get(other.parent).text == turn.text
        and len(tree.path(other.id)) == depth
        and tree.path(other.id)[0].id != tree.path(first.id)[0].id
    ]
    return [first, *paired] if paired else shown


@dataclass
class Blind:
    """A comparison being made: the replies in their shown order, the ranking so far (indices)."""

    shown: list[Node]
    id: str = field(default_factory=lambda: new_id()[:8])
    ranking: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, nodes: list[Node], rng: random.Random | None = None) -> Blind:
        order = list(nodes)
        (rng or random.Random()).shuffle(order)
        return cls(order)

    def rank(self, number: int) -> None:
        """The reply shown as `number` (1-based) is the next best."""
        k = number - 1
        if not 0 <= k < len(self.shown):
            raise ValueError(f"there are {len(self.shown)} replies; pick 1 to {len(self.shown)}")
        if k in self.ranking:
            raise ValueError(f"{number} is ranked already ({self.ranking.index(k) + 1})")
        self.ranking.append(k)

    def tags(self) -> dict[str, str]:
        """node id -> the tag this comparison puts on it."""
        out = {}
        for k, node in enumerate(self.shown):
            rank = self.ranking.index(k) + 1 if k in self.ranking else "-"
            out[node.id] = f"blind:{self.id}:{rank}"
        return out


def variant(node: Node, models: int = 1) -> str:
    """What a blind comparison hides, as one label: persona, temperature, steering (and the model
    when the session holds replies of several)."""
    params = node.params or {}
    terms = (node.steer or {}).get("terms") or []
    steer = " + ".join(
        f"{t.get('vector')}:{t.get('strength'):g}"
        for t in terms
        if isinstance(t.get("strength"), (int, float))
    )
    parts = [node.persona or "?", f"T {params.get('temperature', '?')}", steer or "unsteered"]
    if models > 1:
        parts.insert(1, (node.model or "?").rsplit("/", 1)[-1])
    return " · ".join(parts)


@dataclass
class Picks:
    """Every blind comparison in a session: per comparison, (variant, rank or None) for each reply shown."""

    comparisons: dict[str, list[tuple[str, int | None]]]

    @classmethod
    def of(cls, tree: Tree) -> Picks:
        models = len({n.model for n in tree.nodes.values() if any(TAG.match(t) for t in n.tags)})
        found: dict[str, list[tuple[str, int | None]]] = {}
        for node in tree.nodes.values():
            for tag in node.tags:
                m = TAG.match(tag)
                if m:
                    rank = None if m.group(2) == "-" else int(m.group(2))
                    found.setdefault(m.group(1), []).append((variant(node, models), rank))
        return cls(found)

    def wins(self) -> dict[str, tuple[int, int]]:
        """variant -> (times ranked best, times shown in a comparison with a best)."""
        out: dict[str, list[int]] = {}
        for entries in self.comparisons.values():
            if not any(rank == 1 for _, rank in entries):
                continue
            for name, rank in entries:
                counts = out.setdefault(name, [0, 0])
                counts[0] += rank == 1
                counts[1] += 1
        return {k: (v[0], v[1]) for k, v in out.items()}

    def pairs(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(a, b) -> (times a was ranked above b, times both were ranked or one ranked above the
        other unranked), over the comparisons showing both (a < b by name)."""
        out: dict[tuple[str, str], list[int]] = {}
        for entries in self.comparisons.values():
            for i, (a, ra) in enumerate(entries):
                for b, rb in entries[i + 1 :]:
                    if a == b or ra is None and rb is None:
                        continue
                    first, second, r1, r2 = (a, b, ra, rb) if a < b else (b, a, rb, ra)
                    counts = out.setdefault((first, second), [0, 0])
                    counts[0] += r1 is not None and (r2 is None or r1 < r2)
                    counts[1] += 1
        return {k: (v[0], v[1]) for k, v in out.items()}
