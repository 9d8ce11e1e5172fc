"""Telling a boolean attention mask that is only causal, so the kernel can take it as an offset.

transformers hands a pass of several tokens after a cache a boolean mask (B, 1, T, L); where it is
exactly causal (query i sees keys j <= i + L - T, for every row), simlab's attention computes the
same bits from the offset alone, and can then pass over the keys no query sees and take the keys
every query sees without a test each (qmatmul.c's attention_parts).
"""

from __future__ import annotations

import weakref

import torch

_seen: list = [(None, None)]  # (a weak reference to the mask last looked at, what it was)


def causal_offset(mask: torch.Tensor, t: int, length: int) -> int | None:
    """L - T where `mask` (broadcastable to (B, H, T, L), bool) is True exactly where j <= i + L - T,
    else None: a look at T x L values (~50 us for a 64-token pass after 2,000 tokens), once for the
    one mask a forward pass hands every layer (transformers makes a new one for each pass and
    changes none in place)."""
    if mask.dtype != torch.bool or mask.dim() != 4 or tuple(mask.shape[-2:]) != (t, length) or length < t:
        return None  # (fewer keys than queries: rows that see nothing, which an offset cannot say)
    seen, answer = _seen[0]  # (one read: another thread's pass may be replacing it)
    if seen is not None and seen() is mask:
        return answer
    want = torch.ones(t, length, dtype=torch.bool, device=mask.device).tril(length - t)
    answer = length - t if bool((mask == want).all()) else None
    _seen[0] = (weakref.ref(mask), answer)
    return answer


def for_kernel(mask: torch.Tensor | None, causal: bool, t: int, length: int):
    """(mask, causal offset, keys) as simlab's attention takes an sdpa-style mask for T queries
    and L keys: a mask that is only causal becomes its offset (the same bits, sooner); no mask on
    a causal pass is sdpa's is_causal, aligned top-left: the first T keys (as transformers crops),
    offset 0; otherwise the mask as it is, offset -1 (none)."""
    if mask is not None:
        found = causal_offset(mask, t, length)
        return (mask, -1, length) if found is None else (None, found, length)
    return (None, 0, min(t, length)) if causal else (None, -1, length)
