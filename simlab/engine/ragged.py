"""One decode step for rows whose prompts differ in length (a sweep's later turns), each row
computed as it would be alone.

Padding a batch changes what attention sums, so no row is padded: each keeps the KV cache it had
alone (its own DynamicCache), the products and norms run on the whole batch (their rows are
summed alone), and attention runs row by row on that row's own keys, with the mask the model
builds for it alone. Where a model family or attention kind is not known here, `supported` says
no and the engine decodes the runs one after another.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from simlab.models import gemma3, native_attention

# Families whose forward builds its masks with create_causal_mask (and, for sliding layers,
# create_sliding_window_causal_mask) and whose attention goes through ALL_ATTENTION_FUNCTIONS.
FAMILIES = frozenset({"gpt2", "gemma2", "gemma3_text", "llama", "qwen2", "qwen3"})


def supported(model) -> bool:
    config = model.config
    return (
        config.model_type in FAMILIES
        and config._attn_implementation in ("sdpa", "simlab")
        and not getattr(config, "use_bidirectional_attention", False)
    )


class Rows:
    """A layer's keys (or values) as each row's own tensor, (1, H, T_row, D), with the row's masks."""

    def __init__(self, tensors: list, masks: list):
        self.tensors = tensors
        self.masks = masks  # per row: that row's mask for this layer, as the model builds it alone


class RaggedCache(Cache):
    """Each row's own cache behind one Cache: update appends each row's new key and value to its
    cache and hands attention the rows (Rows), not a padded tensor."""

    def __init__(self, rows: list, masks: list[dict], layer_types: list[str] | None):
        super().__init__(layers=rows[0].layers)  # sizes for the batch mask, which attention ignores
        self.rows = rows
        self.masks = masks
        self.layer_types = layer_types

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        kind = self.layer_types[layer_idx] if self.layer_types else "full_attention"
        keys, values = [], []
        for b, row in enumerate(self.rows):
            k, v = row.update(key_states[b : b + 1], value_states[b : b + 1], layer_idx, *args, **kwargs)
            keys.append(k)
            values.append(v)
        masks = [m[kind] for m in self.masks]
        return Rows(keys, masks), Rows(values, masks)


def _base(module):
    """The attention function the module's model names: sdpa, or simlab's own."""
    return (
        native_attention.attention
        if module.config._attn_implementation == "simlab"
        else sdpa_attention_forward
    )


def attention(module, query, key, value, attention_mask, **kwargs):
    """The model's attention (sdpa or simlab's), which given Rows attends row by row."""
    if not isinstance(key, Rows):
        return _base(module)(module, query, key, value, attention_mask, **kwargs)
    outputs = [
        _base(module)(module, query[b : b + 1], k, v, mask, **kwargs)[0]
        for b, (k, v, mask) in enumerate(zip(key.tensors, value.tensors, key.masks))
    ]
    return torch.cat(outputs, dim=0), None  # (B, 1, H, D)


def _install(model) -> None:
    """Put `attention` in place of the model's attention function, once: in simlab's own Gemma 3
    (models.gemma3), or in transformers' table for its models (imported only then: it brings
    transformers' modeling stack)."""
    name = model.config._attn_implementation
    if isinstance(model, gemma3.Gemma3ForCausalLM):
        gemma3.ATTENTION[name] = attention
        return
    from transformers.modeling_utils import AttentionInterface

    if AttentionInterface._global_mapping.get(name) is not attention:
        AttentionInterface.register(name, attention)


def _masks(model, cache, position: torch.Tensor, dtype: torch.dtype) -> dict:
    """The masks one row's next token gets alone, per layer kind (None where the model skips one)."""
    if isinstance(model, gemma3.Gemma3ForCausalLM):  # transformers' masks without masking_utils
        return gemma3.masks_for(model.config, cache, 1, 1, position.device)
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    config = model.config
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    embeds = torch.empty(1, 1, config.hidden_size, device=position.device, dtype=dtype)
    args = {"config": config, "inputs_embeds": embeds, "attention_mask": None, "cache": cache}
    masks = {"full_attention": create_causal_mask(**args, position_ids=position)}
    if "sliding_attention" in kinds:
        masks["sliding_attention"] = create_sliding_window_causal_mask(**args, position_ids=position)
    return masks


def step(model, caches: list, tokens: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Feed one token per row (tokens (B,)) to rows with caches of any lengths; the next-token
    logits, (B, V), each row's as if it had been fed alone."""
    _install(model)
    positions = torch.tensor([[c.get_seq_length()] for c in caches], device=tokens.device)  # (B, 1)
    masks = [_masks(model, c, positions[b : b + 1], dtype) for b, c in enumerate(caches)]
    cache = RaggedCache(caches, masks, getattr(model.config, "layer_types", None))
    out = model(input_ids=tokens.unsqueeze(-1), position_ids=positions, cache=cache, use_cache=True)
    return out.logits[:, -1, :]
