"""simlab's attention on the kernel (qmatmul.c's simlab_attention): each query's output alone, the
same bits whatever the batch, threads or instruction set; and the attention function transformers'
table calls ("simlab"), which runs it where it applies and transformers' sdpa elsewhere."""

from __future__ import annotations

import torch

from simlab.models import masks, native

QUERIES = 32  # positions per kernel call: its working memory grows with them times the keys


def attend(query, key, value, mask, scale: float, softcap: float = 0.0, causal_offset: int = -1):
    """softmax(scale q K^T (+ mask)) V for query (B, H, T, D), key (B, KH, L, D), value (B, KH, L, Dv),
    float32 on the CPU, as (B, T, H, Dv): each query's output alone, the same bits whatever the
    batch, threads or instruction set (qmatmul.c's simlab_attention). mask: None, booleans (True:
    attend) or floats added to the scores, broadcastable to (B, H, T, L); causal_offset >= 0: query t
    sees keys j <= t + causal_offset. Long passes go QUERIES positions at a time (a query's output
    does not depend on the others), so memory stays flat."""
    if not _fits(query, key):
        heads = f"{query.shape[1]} and {key.shape[1]}"
        raise ValueError(f"attention: query heads a multiple of key heads, at most 64 each; got {heads}")
    t = query.shape[2]
    if t <= QUERIES:
        return _attend(query, key, value, mask, scale, softcap, causal_offset)
    parts = []
    for start in range(0, t, QUERIES):
        end = min(start + QUERIES, t)
        part = None if mask is None else mask.expand(*mask.shape[:2], t, mask.shape[-1])[:, :, start:end]
        offset = causal_offset + start if causal_offset >= 0 else -1
        parts.append(_attend(query[:, :, start:end], key, value, part, scale, softcap, offset))
    return torch.cat(parts, dim=1)


def _attend(query, key, value, mask, scale: float, softcap: float, causal_offset: int):
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))
    b, h, t, d = q.shape
    kh, length, dv = k.shape[1], k.shape[2], v.shape[-1]
    kind, m, ms = 0, None, None
    if mask is not None:
        m = mask.to(torch.uint8) if mask.dtype == torch.bool else mask.float()
        kind = 1 if mask.dtype == torch.bool else 2
        m = m.expand(b, h, t, length)  # strides 0 where it broadcasts
        ms = native._strides(m, 4)
    qb = min(t, 8)  # simlab_attention_work's count, without a call for it
    work = b * kh * -(-t // 8) * -(-length // 128) * (h // kh) * qb * (2 + dv)
    out = torch.empty((b, t, h, dv), dtype=torch.float32)
    scratch = torch.empty(work, dtype=torch.float32)
    native.library().simlab_attention(
        *(x for a in (q, k, v) for x in (a.data_ptr(), native._strides(a, 3))),
        None if m is None else m.data_ptr(), kind, ms, b, h, kh, t, length, d, dv, scale, softcap,
        causal_offset, out.data_ptr(), scratch.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    return out


def _fits(query, key) -> bool:
    """Whether the kernel takes these shapes: query heads a multiple of the key heads, at most 512
    queries of one key head in a block (8 positions times the heads per key head)."""
    heads, kv_heads = query.shape[1], key.shape[1]
    return heads % kv_heads == 0 and heads // kv_heads * min(query.shape[2], 8) <= 512


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """An attention function as transformers' table holds them ("simlab"): `attend` where it runs
    (float32 on the CPU, the library built, no dropout), else transformers' sdpa. The masks are
    sdpa's: None means causal for a pass of several tokens (aligned as sdpa's is_causal is)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    tensors = (query, key, value)
    usable = all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
    usable = (
        usable and not dropout and kwargs.get("position_bias") is None and not kwargs.get("output_attentions")
    )
    if not usable or native.library() is None or not _fits(query, key):
        if kwargs.get("softcap"):  # sdpa has none: transformers' eager attention, with sdpa's masks
            from simlab.models.softcap import softcapped_eager

            return softcapped_eager(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if attention_mask is not None and attention_mask.dtype != torch.bool:
        attention_mask = attention_mask.float()
    t, length = query.shape[2], key.shape[2]
    is_causal = kwargs.get("is_causal")
    causal = (is_causal if is_causal is not None else getattr(module, "is_causal", True)) and t > 1
    attention_mask, offset, keys = masks.for_kernel(attention_mask, causal, t, length)
    key, value = (key, value) if keys == length else (key[:, :, :keys], value[:, :, :keys])
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    softcap = kwargs.get("softcap") or 0.0
    return attend(query, key, value, attention_mask, scale, float(softcap), offset), None
