"""Gemma 2's softcapping on simlab's kernel: the attention's (`native_attention.attention` applies it; where
the kernel does not run, transformers' eager attention, not sdpa, which has none) and the final
logits' (moved into the unembedding, row by row, so a batch gives each row its bits alone)."""

from __future__ import annotations

import torch


class RowSoftcap(torch.nn.Module):
    """The unembedding with the final logit softcapping (Gemma 2's tanh(logits / cap) * cap, the
    model's own ops) applied to each batch row on its own, as `RowActivation` does: the model's
    forward then caps nothing (its config's cap moves here), and a batch gives each row its bits."""

    def __init__(self, head: torch.nn.Module, cap: float):
        super().__init__()
        self.head, self.cap = head, cap
        # (an unembedding simlab keeps as int8, say, need not say its input size)
        self.out_features = getattr(head, "out_features", None)
        self.in_features = getattr(head, "in_features", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, cap = self.head.forward(x), self.cap
        if logits.dim() < 2 or logits.shape[0] == 1:
            return torch.tanh(logits / cap) * cap
        return torch.cat([torch.tanh(logits[i : i + 1] / cap) * cap for i in range(logits.shape[0])])


def cap_rows(model: torch.nn.Module) -> None:
    """Move a final logit softcapping from the model's forward into its unembedding, row by row."""
    config = model.config
    cap = getattr(config, "final_logit_softcapping", None)
    if cap and isinstance(getattr(model, "lm_head", None), torch.nn.Module):
        model.lm_head = RowSoftcap(model.lm_head, float(cap))
        config.final_logit_softcapping = None


def softcapped_eager(module, query, key, value, mask, dropout, scaling, **kwargs):
    """Softcapped attention (Gemma 2's) where simlab's kernel does not run (`native_attention.attention`
    falls back here, not to sdpa, which has no softcap): transformers' eager attention, given
    sdpa's masks as the additive masks it takes."""
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    t = query.shape[2]
    if mask is None and t > 1:  # sdpa's is_causal: aligned top-left, the first t keys
        key, value, mask = (
            key[:, :, :t],
            value[:, :, :t],
            torch.ones(t, t, dtype=torch.bool, device=query.device).tril(),
        )
    if mask is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=query.dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(query.dtype).min
        )
    return eager_attention_forward(module, query, key, value, mask, dropout, scaling, kwargs["softcap"])
