"""A multiverse as the session keeps it: one record beside the node it grew from (the settings,
depth, cutoff, what it covered and the token tree with each block's conditional probability and
text), read back without the model; and what every face draws from it: the blocks under a zoom,
each block's probability renormalised to the zoomed block, as bars. No torch.

A block in the record is `[token id, conditional probability, text, [children]]`; its absolute
probability `p` is the product of the conditionals along its path, computed again on reading.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from simlab.session.tree import new_id

BAR = 24  # characters of a bar at 100%


@dataclass
class Block:
    """A block of a saved multiverse: its token ids from the root, its text (its last token's), its
    absolute probability and its probability given its parent; its children, most probable first."""

    ids: tuple[int, ...]
    text: str
    p: float
    conditional: float
    children: list[Block] = field(default_factory=list)
    parent: Block | None = field(default=None, repr=False, compare=False)

    @property
    def path(self) -> list[Block]:
        """The blocks from the root's first level down to this one."""
        out, block = [], self
        while block is not None and block.ids:
            out.append(block)
            block = block.parent
        return out[::-1]

    def text_from_root(self) -> str:
        return "".join(b.text for b in self.path)


def record(
    grown: Any,
    decode,
    node_id: str,
    prompt_tokens: int,
    params: dict[str, Any] | None,
    model: str | None,
) -> dict[str, Any]:
    """The record of a grown multiverse (engine.multiverse.Multiverse; decode: ids -> text) under a node."""

    def block(b) -> list:
        return [b.ids[-1], b.conditional, decode([b.ids[-1]]), [block(c) for c in b.children]]

    return {
        "id": new_id(),
        "node": node_id,
        "created": time.time(),
        "model": model,
        "prompt_tokens": prompt_tokens,
        "depth": grown.depth,
        "cutoff": grown.cutoff,
        "raw": grown.raw,
        "params": None if grown.raw else params,
        "covered": list(grown.covered),
        "passes": grown.passes,
        "seconds": round(grown.seconds, 3),
        "blocks": [block(c) for c in grown.root.children],
    }


def check(saved: Any) -> dict[str, Any]:
    """A multiverse record read from a file, checked (ValueError saying what is wrong)."""
    if not isinstance(saved, dict):
        raise ValueError("a multiverse record must be a JSON object")
    for key, kinds in (("id", str), ("node", str), ("depth", int), ("cutoff", (int, float))):
        if not isinstance(saved.get(key), kinds):
            raise ValueError(f"a multiverse record needs {key!r}")
    blocks = saved.get("blocks")
    stack = [blocks]
    while stack:
        level = stack.pop()
        if not isinstance(level, list):
            raise ValueError("a multiverse record's blocks must be lists")
        for b in level:
            if not (
                isinstance(b, list)
                and len(b) == 4
                and isinstance(b[0], int)
                and isinstance(b[1], (int, float))
                and isinstance(b[2], str)
            ):
                raise ValueError("a multiverse block is [token id, probability, text, [children]]")
            stack.append(b[3])
    return saved


def tree(saved: dict[str, Any]) -> Block:
    """The root block of a saved multiverse (p 1), with each block's absolute probability."""
    root = Block((), "", 1.0, 1.0)
    stack = [(root, saved["blocks"])]
    while stack:
        parent, level = stack.pop()
        for token, q, text, children in level:
            child = Block((*parent.ids, token), text, parent.p * q, q, parent=parent)
            parent.children.append(child)
            stack.append((child, children))
    return root


def find(root: Block, ids: tuple[int, ...]) -> Block | None:
    """The block whose path is these token ids (the root for none)."""
    block = root
    for token in ids:
        block = next((c for c in block.children if c.ids[-1] == token), None)
        if block is None:
            return None
    return block


def rows(zoom: Block) -> list[Block]:
    """The blocks under `zoom`, depth first, most probable first: the lines a face draws."""
    out: list[Block] = []
    stack = list(reversed(zoom.children))
    while stack:
        block = stack.pop()
        out.append(block)
        stack.extend(reversed(block.children))
    return out


def bar(share: float, width: int = BAR) -> str:
    filled = share * width
    return "█" * int(filled) + ("▌" if filled - int(filled) >= 0.5 else "")


def line(block: Block, zoom: Block, width: int = BAR) -> str:
    """A block's line under a zoom: a bar as long as its share of the zoomed block, the share, and
    its token's text indented by its depth below the zoom."""
    share = block.p / zoom.p if zoom.p else 0.0
    indent = "  " * (len(block.ids) - len(zoom.ids) - 1)
    token = json.dumps(block.text, ensure_ascii=False)
    return f"{bar(share, width):<{width}} {100 * share:5.1f}%  {indent}{token}"


def covered_line(saved: dict[str, Any], zoom: Block | None = None) -> str:
    """What the blocks cover at each depth (within the zoomed block when zoomed), the settings, the passes."""
    if zoom is not None and zoom.ids:
        masses = []
        level = [zoom]
        while True:
            level = [c for b in level for c in b.children]
            if not level:
                break
            masses.append(sum(b.p for b in level) / zoom.p)
        first = len(zoom.ids) + 1
        where = f"of {json.dumps(zoom.text_from_root(), ensure_ascii=False)} ({100 * zoom.p:.1f}%)"
        covers = ", ".join(f"{100 * m:.1f}% at depth {first + d}" for d, m in enumerate(masses))
        return f"covers {covers or 'nothing deeper above the cutoff'} {where}"
    covers = ", ".join(f"{100 * m:.1f}% at depth {d + 1}" for d, m in enumerate(saved["covered"]))
    return f"covers {covers or 'nothing above the cutoff'}; {settings_line(saved)}"


def settings_line(saved: dict[str, Any]) -> str:
    params = saved.get("params")
    if saved.get("raw") or not params:
        how = "the model's own distribution"
    else:
        knobs = ", ".join(
            f"{name} {params.get(key, default):g}"
            for name, key, default in (
                ("temperature", "temperature", 1.0),
                ("top-k", "top_k", 0),
                ("top-p", "top_p", 1.0),
                ("min-p", "min_p", 0.0),
                ("typical-p", "typical_p", 1.0),
                ("repetition penalty", "repetition_penalty", 1.0),
            )
        )
        how = f"as sampled ({knobs})"
    return f"{how}; depth {saved['depth']}, cutoff {saved['cutoff']:g}"


def drawn(
    saved: dict[str, Any], zoom: Block | None = None, width: int = BAR, numbered: bool = False
) -> list[str]:
    """Every block's line under the zoom (the whole multiverse by default), numbered from 1 as
    `--keep N` counts them when asked, then what they cover."""
    root = tree(saved) if zoom is None else zoom
    blocks = rows(root)
    digits = len(str(len(blocks)))
    lines = [(f"{k:>{digits}} " if numbered else "") + line(b, root, width) for k, b in enumerate(blocks, 1)]
    return lines + [covered_line(saved, root)]


def as_json(saved: dict[str, Any]) -> dict[str, Any]:
    """The record with its blocks as objects: their number as drawn (what --keep N takes), ids from
    the root, token, text, p, conditional, children."""
    root = tree(saved)
    numbers = {id(b): k for k, b in enumerate(rows(root), 1)}

    def block(b: Block) -> dict[str, Any]:
        out = {"n": numbers[id(b)], "ids": list(b.ids), "token": b.ids[-1], "text": b.text, "p": b.p}
        return {**out, "conditional": b.conditional, "children": [block(c) for c in b.children]}

    return {**saved, "blocks": [block(c) for c in root.children]}
