"""The multiverse of a text: every continuation whose probability is at least `cutoff` of the whole,
token by token to `depth`, as nested blocks (Janus's block multiverse), computed exactly. Each
block's probability is the product of its tokens' conditional probabilities under the sampling
settings as the sampler applies them (temperature, top-k, top-p, min-p, typical-p, the repetition
penalty on the text so far; or the model's own distribution, `raw`). The prompt goes in once; each
level's open prefixes then go in as batches on copies of its cache, a pass a batch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from simlab.engine import kvcache
from simlab.engine import prefix as prefixes
from simlab.engine.logits import process_logits
from simlab.engine.params import SamplingParams

ROWS = 16  # open prefixes a pass at most (each holds a copy of the prompt's cache)


@dataclass
class Block:
    """One continuation: its tokens from the root, its probability (the product along its path) and
    its probability given its parent; its children, most probable first."""

    ids: tuple[int, ...]
    p: float
    conditional: float
    children: list[Block] = field(default_factory=list)


@dataclass
class Multiverse:
    root: Block
    depth: int
    cutoff: float
    raw: bool
    covered: list[float]  # the mass of the blocks at each depth, 1..depth reached
    passes: int  # forward passes, the prompt's included
    seconds: float

    def leaves(self) -> list[Block]:
        out, stack = [], [self.root]
        while stack:
            block = stack.pop()
            if block.children:
                stack.extend(reversed(block.children))
            elif block is not self.root:
                out.append(block)
        return out


def distribution(logits: torch.Tensor, context: list[int], params: SamplingParams, raw: bool) -> torch.Tensor:
    """The probability of each next token (V,), float64: the model's own (raw), or as the sampler
    draws under params (greedy: all on the argmax)."""
    row = logits.float().unsqueeze(0)
    if raw:
        return row[0].double().softmax(-1)
    processed = process_logits(
        row, torch.tensor([context], device=row.device), params
    )  # (greedy: the penalty only)
    if params.greedy:
        out = torch.zeros(row.shape[-1], dtype=torch.float64)
        out[int(processed[0].argmax())] = 1.0
        return out
    return processed[0].double().softmax(-1)


def grow(
    engine,
    prompt: list[int],
    params: SamplingParams,
    depth: int,
    cutoff: float,
    raw: bool = False,
    rows: int = ROWS,
) -> Multiverse:
    """The multiverse after `prompt` (ids) to `depth` tokens, keeping blocks of probability >= cutoff."""
    if depth < 1 or not 0 < cutoff <= 1:
        raise ValueError("depth must be 1 or more and cutoff in (0, 1]")
    started = time.perf_counter()
    model = engine.model
    root = Block((), 1.0, 1.0)
    covered: list[float] = []
    with torch.inference_mode():
        cache = prefixes.new_cache(model)
        passes = prefixes.plan(0, len(prompt))
        upto = getattr(engine, "upto", 0)  # (a scripted engine's: none)
        logits = prefixes.feed(model, cache, prompt, [], passes, None, upto=upto)[0]
        count = len(prefixes.calls(passes, 0, upto))  # (the prompt's model calls)
        level = [(root, logits)]
        for d in range(depth):
            opened, ends = [], set(getattr(engine, "eos_ids", ()))
            for block, row in level:
                q = distribution(row, prompt + list(block.ids), params, raw)
                kept = torch.nonzero(block.p * q >= cutoff).flatten()
                for t in sorted(kept.tolist(), key=lambda t: (-float(q[t]), t)):
                    child = Block((*block.ids, t), block.p * float(q[t]), float(q[t]))
                    block.children.append(child)
                    opened.append(child)
            if not opened:
                break
            covered.append(sum(b.p for b in opened))
            opened = [b for b in opened if b.ids[-1] not in ends]  # (a text that ended goes no further)
            if d == depth - 1 or not opened:
                break
            rows_logits = []
            for at in range(0, len(opened), rows):  # each batch on copies of the prompt's cache
                group = opened[at : at + rows]
                batch = kvcache.repeated(cache, len(group))  # (sliding layers: their window only)
                ids = torch.tensor([list(b.ids) for b in group], device=engine.device)
                out = model(input_ids=ids, cache=batch, use_cache=True, logits_to_keep=1).logits[:, -1]
                rows_logits.extend(out)
                count += 1
            level = list(zip(opened, rows_logits))
    return Multiverse(root, depth, cutoff, raw, covered, count, time.perf_counter() - started)


def conditionals(engine, prompt: list[int], ids: list[int], params: SamplingParams, raw: bool) -> list[float]:
    """Each of `ids`' conditional probabilities after `prompt`, as `grow` defines them, from one
    teacher-forced pass of the one sequence alone."""
    full = list(prompt) + list(ids)
    with torch.inference_mode():
        logits = engine.model(
            input_ids=torch.tensor([full], device=engine.device), logits_to_keep=len(ids) + 1
        ).logits[0]
    return [
        float(distribution(logits[k], full[: len(prompt) + k], params, raw)[t]) for k, t in enumerate(ids)
    ]
