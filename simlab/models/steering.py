"""Steering while the model runs: vectors added to the residual stream at blocks' outputs, where
llama.cpp adds its control vectors (after block N's residual add, for direction.N) and repeng's
ControlModel adds its own. `Steered` puts what a run adds (engine.steering) into the model's own
forward with hooks that exist only while a steered forward runs (nothing is added, and nothing
costs, when steering is off); the lean decode step adds the same tensors itself (models.lean), as
the same torch op on the same values."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch


def block_list(model) -> tuple[str, torch.nn.ModuleList]:
    """The model's blocks, in order, and their name in its base model: the longest ModuleList there,
    preferring one of num_hidden_layers (GPT-2's transformer.h, Llama's and Gemma's model.layers)."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None) or model.base_model
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    expected = getattr(config, "num_hidden_layers", None)
    lists = [(name, m) for name, m in base.named_children() if isinstance(m, torch.nn.ModuleList) and len(m)]
    lists.sort(key=lambda nm: (len(nm[1]) == expected, len(nm[1])), reverse=True)
    if not lists:
        raise ValueError(
            f"{type(model).__name__}: no list of blocks found; simlab knows GPT-2-style (transformer.h, "
            "ln_f) and Llama/Gemma-style (model.layers, model.norm) models"
        )
    return lists[0]


class Steered:
    """A model's blocks, ready to have vectors added to their outputs during a forward."""

    def __init__(self, model):
        self.model = model
        self._blocks = None

    @property
    def blocks(self) -> torch.nn.ModuleList:
        if self._blocks is None:  # (found on first use: an engine never steered never looks)
            self._blocks = block_list(self.model)[1]
        return self._blocks

    @contextmanager
    def adding(self, adds: Mapping[int, torch.Tensor] | None) -> Iterator[None]:
        """While in this block, the model's forward adds `adds[N]` to block N's output (the hooks
        run before any other on the block, so a trace's hooks read the steered stream; removed on
        exit). None or {}: nothing is registered."""
        handles = []
        try:
            for block, add in (adds or {}).items():
                handles.append(self.blocks[block].register_forward_hook(_adder(add), prepend=True))
            yield
        finally:
            for handle in handles:
                handle.remove()


def _adder(add: torch.Tensor):
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + add, *output[1:])
        return output + add

    return hook
