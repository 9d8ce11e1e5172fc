"""A reply read again by the model, teacher-forced, as its sampling saw it: the next-token
distributions that predict each of its tokens (steered as the run was: the prompt's positions with
what the steering adds to a prompt, the reply's with what it adds to a reply) and, on request, the
blocks' outputs at its tokens. What compare's dose-response table is measured with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from simlab.engine.prefix import new_cache
from simlab.engine.steering import Steering
from simlab.models.steering import block_list


@dataclass
class Read:
    logprobs: torch.Tensor  # (k, V) float32: the log-distribution predicting each reply token
    blocks: np.ndarray | None  # (len(blocks), k, H): those blocks' outputs at the reply's tokens


def forced(
    engine, context: Sequence[int], reply: Sequence[int], steering: Steering | None = None, blocks=()
) -> Read:
    """One reading of `reply` after `context` (both token ids; the reply not empty): the context in
    one pass, then the reply in another, each with what `steering` adds at its positions."""
    model, device = engine.model, engine.device
    adds = steering.adds(model.dtype, device) if steering else {}
    on_prompt = adds if steering and steering.on_prompt else None
    on_reply = adds if steering and steering.on_reply else None
    kept: list[torch.Tensor] = []

    def hook(module, args, output):
        value = output[0] if isinstance(output, tuple) else output
        kept.append(value[0].float())

    layer_list = block_list(model)[1]
    cache = new_cache(model)
    with torch.inference_mode():
        with engine.steered.adding(on_prompt):
            ids = torch.tensor([list(context)], device=device)
            first = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)  # (its last only)
        handles = [layer_list[b].register_forward_hook(hook) for b in blocks]
        try:
            with engine.steered.adding(on_reply):
                rest = model(
                    input_ids=torch.tensor([list(reply)], device=device), cache=cache, use_cache=True
                )
        finally:
            for handle in handles:
                handle.remove()
        logits = torch.cat([first.logits[0, -1:], rest.logits[0, :-1]]).float()
        outputs = torch.stack(kept).cpu().numpy() if blocks else None
    return Read(logits.log_softmax(dim=-1), outputs)


def kl_per_token(p: torch.Tensor, q: torch.Tensor) -> np.ndarray:
    """KL(p || q) in nats at each position, from log-distributions (k, V) each."""
    weight = p.exp()
    terms = torch.where(weight > 0, weight * (p - q), torch.zeros((), dtype=p.dtype))
    return terms.sum(dim=-1).double().cpu().numpy()


def projection(outputs: np.ndarray, directions: dict[int, np.ndarray], blocks: Sequence[int]) -> float:
    """The mean, over the reply's tokens and the blocks, of each block output's projection on that
    block's direction made unit length."""
    values = []
    for i, block in enumerate(blocks):
        unit = np.asarray(directions[block], dtype=np.float64)
        unit = unit / (np.linalg.norm(unit) or 1.0)
        values.append(outputs[i].astype(np.float64) @ unit)  # (k,)
    return float(np.mean(values))
