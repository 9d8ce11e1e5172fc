"""A decode step with less around the matrix products: layers that read one input fused into one
product (each row's result the same as the layers' alone, bit for bit: tested), RMS norms as one
call (simlab's own, torch's to rounding and the same bits on every CPU), and each known family's
decode step as the model's own ops without the module machinery (the model's logits bit for bit),
a layer on the kernel in three C calls (models.blocks).
"""

from __future__ import annotations

import torch

from simlab.models import native, native_attention
from simlab.models.fused import FusedPart, FusedRMSNorm, RowActivation, _Fused
from simlab.models.native import NativeGroup, NativeLinear
from simlab.models.softcap import RowSoftcap, cap_rows

FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def fuse(model: torch.nn.Module) -> int:
    """Fuse the q/k/v and gate/up layers of each block that are `NativeLinear`s of one layout
    (one `NativeGroup` product each; each row's sums are the same as alone). Returns
    how many groups were fused."""
    count = 0
    for parent in list(model.modules()):
        for names in FUSED:
            layers = [getattr(parent, name, None) for name in names]
            if not all(isinstance(layer, NativeLinear) for layer in layers):
                continue
            first = layers[0]
            if any(
                (layer.kernel_bits & ~native.HALF, layer.group, layer.in_features, layer.offset is None)
                != (first.kernel_bits & ~native.HALF, first.group, first.in_features, first.offset is None)
                for layer in layers
            ):
                continue
            if len({layer.kernel_bits for layer in layers}) > 1:  # float16 scales beside float32 ones
                for layer in layers:
                    layer.float_scales()
            joined = NativeGroup(layers)
            sizes = [layer.out_features for layer in layers]
            fused = _Fused(joined, sizes)
            parent.add_module("fused_" + "_".join(names), joined)
            for index, (name, layer) in enumerate(zip(names, layers)):
                setattr(parent, name, FusedPart(fused, index, layer))
            count += 1
    return count


# norm class name -> whether it scales by (1 + weight) after normalising in float32 (Gemma), or by
# weight after casting back (Llama and the many models that copy its norm)
_NORMS = {
    "GemmaRMSNorm": True,
    "Gemma2RMSNorm": True,
    "Gemma3RMSNorm": True,
    "LlamaRMSNorm": False,
    "MistralRMSNorm": False,
    "Qwen2RMSNorm": False,
    "Qwen3RMSNorm": False,
}


def fuse_norms(model: torch.nn.Module) -> int:
    """Replace the model's known RMS norms by `FusedRMSNorm`; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            gemma = _NORMS.get(type(child).__name__)
            if gemma is not None and isinstance(getattr(child, "weight", None), torch.Tensor):
                setattr(parent, name, FusedRMSNorm(child, gemma))
                count += 1
    return count


def own_attention(model: torch.nn.Module) -> None:
    """Attention by simlab's kernel (`native_attention.attention`: each query's output alone, the same bits
    whatever the batch, threads or instruction set) in place of sdpa: in simlab's own Gemma 3 by
    its table, in transformers' models by theirs (with sdpa's masks under the same name); and each
    MLP's activation applied row by row (`RowActivation`)."""
    for parent in list(model.modules()):
        act = getattr(parent, "act_fn", None)
        if isinstance(act, torch.nn.Module) and not isinstance(act, RowActivation):
            parent.act_fn = RowActivation(act)
    config = model.config
    softcapped = config._attn_implementation == "eager" and getattr(config, "attn_logit_softcapping", None)
    if config._attn_implementation not in ("sdpa", "simlab") and not softcapped:
        return  # others keep theirs (Gemma 2's eager passes its softcap, which the kernel applies)
    from simlab.models import gemma3

    if not isinstance(model, gemma3.Gemma3ForCausalLM):
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
        from transformers.modeling_utils import AttentionInterface

        AttentionInterface.register("simlab", native_attention.attention)
        AttentionMaskInterface.register("simlab", sdpa_mask)
        _own_rotary(model)
    config._attn_implementation = "simlab"


def _own_rotary(model: torch.nn.Module) -> None:
    """A pass's rotary in one kernel call (models.native.rotary: torch's bits; torch's ops where it
    does not apply) for the families whose rotary is Llama's: their modeling module's function,
    which every model of that family in the process then calls, to the same bits."""
    import sys

    from simlab.models import gemma3

    if model.config.model_type not in FAMILY and model.config.model_type != "gemma2":
        return
    for module in model.modules():
        if type(module).__name__.endswith("Attention"):
            owner = sys.modules.get(type(module).__module__)
            if owner is not None and hasattr(owner, "apply_rotary_pos_emb"):
                owner.apply_rotary_pos_emb = gemma3.apply_rotary_pos_emb
            return


def rows_alone(model: torch.nn.Module) -> bool:
    """Whether a batch of rows gives each row the very bits it gets alone: every product is
    simlab's kernel (`NativeLinear`, each output row summed alone), so are the norms and attention,
    the activations go row by row, on float32 activations on the CPU. torch's own products,
    attention and large elementwise ops sum or round in an order that changes with the batch
    (measured on MKL's float products, CPU sdpa, GELU-tanh and SiLU), so elsewhere siblings decode
    one by one."""
    config = model.config
    if native.library() is None or getattr(config, "_attn_implementation", None) != "simlab":
        return False
    heads = getattr(config, "num_attention_heads", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    # (shapes the kernel leaves to sdpa: native_attention._fits)
    if heads % kv_heads or heads // kv_heads > 64:
        return False
    if getattr(config, "final_logit_softcapping", None):  # tanh over the whole vocabulary, batched
        return False  # (`cap_rows` moves it to the unembedding, row by row)
    wrapped = {id(m.act) for m in model.modules() if isinstance(m, RowActivation)}
    for module in model.modules():
        if isinstance(
            module, (NativeLinear, NativeGroup, FusedPart, FusedRMSNorm, RowActivation, RowSoftcap)
        ):
            continue
        kind = type(module).__name__
        if isinstance(module, torch.nn.Linear) or kind in ("Conv1D", "Int8Linear", "Int4Linear"):
            return False
        if isinstance(module, torch.nn.LayerNorm) or kind.endswith("RMSNorm"):
            return False  # torch's norms: a reduction whose order is not ours
        activation = any(word in kind for word in ("Activation", "GELU", "SiLU", "Tanh", "ReLU"))
        if activation and id(module) not in wrapped:
            return False  # an activation on the whole batch
    params = [p for p in model.parameters()] + [b for b in model.buffers()]
    return all(t.device.type == "cpu" for t in params) and model.dtype == torch.float32


def on_the_kernel(model: torch.nn.Module) -> None:
    """What a model whose products are simlab's kernel gets once they are: q/k/v and gate/up fused,
    simlab's norms, attention and row-by-row activations (so a batch gives each row its bits)."""
    fuse(model)
    fuse_norms(model)
    own_attention(model)
    cap_rows(model)
    for module in model.modules():
        if type(module).__name__.endswith("RotaryEmbedding") and not hasattr(module.forward, "whole"):
            module.forward = tables_here(module)


TABLE = 2048  # values of one cos or sin call that torch computes on the calling thread (its unary grain)


def tables_here(module: torch.nn.Module):
    """The rotary module's forward, its cos and sin tables made a few rows and positions a call,
    each call at most TABLE values, which torch computes on the thread that calls it. Over TABLE,
    torch splits the values among its threads (each calling MKL's vector math), and on the pool's
    other thread they sometimes came out coarse: a tiny Llama's 256-token call had its table's
    second half off by up to 1.5e-4 (what MKL's low-accuracy mode gives; why that thread did so
    was not found) in about one test process in twenty, so that call gave other bits than four
    64-token calls. cos and sin are elementwise, so the pieces are one call's bits. Not for rope
    types that rescale with the longest position (dynamic, longrope): they stay whole."""
    forward = module.forward
    if any(kind in str(getattr(module, "rope_type", "")) for kind in ("dynamic", "longrope")):
        return forward
    width = 2 * max((b.numel() for n, b in module.named_buffers() if n.endswith("inv_freq")), default=1)

    def here(x, position_ids, *args, **kwargs):
        if (
            not isinstance(position_ids, torch.Tensor)
            or position_ids.dim() != 2
            or position_ids.numel() * width <= TABLE
        ):
            return forward(x, position_ids, *args, **kwargs)
        rows = max(1, TABLE // width)  # batch rows a call, then positions a call
        parts = []
        for r in range(0, position_ids.shape[0], rows):
            ids = position_ids[r : r + rows]
            step = max(1, TABLE // (ids.shape[0] * width))
            pieces = [forward(x, ids[:, t : t + step], *args, **kwargs) for t in range(0, ids.shape[1], step)]
            parts.append([torch.cat(tables, dim=1) for tables in zip(*pieces)])
        return tuple(torch.cat(tables, dim=0) for tables in zip(*parts))

    here.whole = forward  # (the forward it calls)
    return here


# transformers' model types whose forward `decode_step` writes out: Llama's decoder (pre-norm
# attention then MLP, rotary, q/k/v and gate/up products), with Qwen2's biases, Qwen3's q/k norms,
# Mistral's and Qwen2's sliding windows; Gemma 3 in simlab's own modules (models.gemma3)
FAMILY = {"llama", "mistral", "qwen2", "qwen3"}


def steps_lean(model: torch.nn.Module) -> bool:
    """Whether `decode_step` knows this model's forward: Gemma 3's text model (simlab's own or
    transformers'), or a causal LM of `FAMILY` as transformers builds it, on sdpa or simlab's
    attention."""
    config = model.config
    if config._attn_implementation not in ("sdpa", "simlab"):
        return False
    if config.model_type in FAMILY:
        return type(model).__name__.endswith("ForCausalLM") and type(model.model).__name__.endswith("Model")
    if config.model_type == "gemma2":  # its softcapped attention only on the kernel's ("simlab")
        return type(model).__name__ == "Gemma2ForCausalLM" and config._attn_implementation == "simlab"
    return (
        config.model_type == "gemma3_text"
        and not getattr(config, "use_bidirectional_attention", False)
        and getattr(config, "attn_logit_softcapping", None) is None
        and type(model).__name__ == "Gemma3ForCausalLM"
    )


def in_blocks(model: torch.nn.Module) -> bool:
    """Whether `decode_step` runs every layer of the model in models.blocks' three calls (which
    read a prefix siblings share where it lies: engine.kvcache.Shared)."""
    from simlab.models import blocks

    if not steps_lean(model):
        return False
    layers = model.model.layers[: model.config.num_hidden_layers]
    made = blocks.blocks(model, layers, gemma=model.config.model_type not in FAMILY)
    return made is not None and all(made)


def decode_step(model: torch.nn.Module, cache, ids: torch.Tensor, adds=None) -> torch.Tensor:
    """The model's forward for new tokens ids (B, T) after `cache`, as the same torch ops in the
    same order on the same modules, without the module machinery around them (hooks, output
    capture, keyword plumbing): the logits (B, T, V), bit for bit the model's own (tested). Module
    hooks do not run: a trace reads the model's own forward. `adds`: block -> a vector added to its
    output, as models.steering's hook adds it (the same op, tested)."""
    adds = adds or {}
    if model.config.model_type in FAMILY:
        return _family_step(model, cache, ids, adds)
    return _gemma_step(model, cache, ids, adds)


def _family_masks(config, cache, h: torch.Tensor, position: torch.Tensor) -> dict:
    """Each layer kind's mask, as the family's model makes them (transformers' own functions)."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    args = {"config": config, "inputs_embeds": h, "attention_mask": None, "cache": cache}
    args["position_ids"] = position
    if config.model_type == "mistral":  # one kind for every layer, by whether there is a window
        make = create_causal_mask if config.sliding_window is None else create_sliding_window_causal_mask
        return dict.fromkeys(("full_attention", "sliding_attention"), make(**args))
    masks = {"full_attention": create_causal_mask(**args)}
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        masks["sliding_attention"] = create_sliding_window_causal_mask(**args)
    return masks


def _family_step(model: torch.nn.Module, cache, ids: torch.Tensor, adds: dict) -> torch.Tensor:
    """`decode_step` for LlamaForCausalLM and the models of `FAMILY` that share its decoder."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from simlab.models import blocks
    from simlab.models.gemma3 import apply_rotary_pos_emb as rotate  # Llama's, one call (tested)

    config, body = model.config, model.model
    layers = body.layers[: config.num_hidden_layers]
    attend = ALL_ATTENTION_FUNCTIONS[config._attn_implementation]
    kinds = getattr(config, "layer_types", None) or ["full_attention"] * len(layers)
    h = body.embed_tokens(ids)  # (B, T, D)
    position = (torch.arange(h.shape[1], device=h.device) + cache.get_seq_length()).unsqueeze(0)
    masks = _family_masks(config, cache, h, position)
    cos_sin = body.rotary_emb(h, position_ids=position)
    window = getattr(config, "sliding_window", None) if config.model_type == "mistral" else None
    fast = blocks.blocks(model, layers, gemma=False) if h.shape[1] == 1 else None
    for i, layer in enumerate(layers):
        out = fast[i].run(h, cache, i, *cos_sin, masks[kinds[i]]) if fast and fast[i] else None
        if out is not None:  # the layer in three kernel calls (models.blocks), its modules' bits
            h = out if i not in adds else out + adds[i]
            continue
        parts = layer._modules  # (read directly: nn.Module's __getattr__ costs ~1 us a lookup)
        attn, mlp = parts["self_attn"], parts["mlp"]
        a, m = attn._modules, mlp._modules
        x = parts["input_layernorm"].forward(h)
        heads = (*x.shape[:-1], -1, attn.head_dim)
        q, k = a["q_proj"].forward(x).view(heads), a["k_proj"].forward(x).view(heads)
        if "q_norm" in a:  # Qwen3
            q, k = a["q_norm"].forward(q), a["k_norm"].forward(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, d)
        v = a["v_proj"].forward(x).view(heads).transpose(1, 2)
        q, k = rotate(q, k, *cos_sin)
        k, v = cache.update(k, v, i)
        out, _ = attend(
            attn, q, k, v, masks[kinds[i]], dropout=0.0, scaling=attn.scaling,
            sliding_window=getattr(attn, "sliding_window", window), position_ids=position,
        )  # fmt: skip
        h = h + a["o_proj"].forward(out.reshape(*x.shape[:-1], -1).contiguous())
        x = parts["post_attention_layernorm"].forward(h)
        x = m["act_fn"].forward(m["gate_proj"].forward(x)) * m["up_proj"].forward(x)
        h = h + m["down_proj"].forward(x)
        if i in adds:  # a steering vector at this block's output
            h = h + adds[i]
    return model.lm_head.forward(body.norm.forward(h))  # (B, T, V)


def _gemma_step(model: torch.nn.Module, cache, ids: torch.Tensor, adds: dict) -> torch.Tensor:
    """`decode_step` for Gemma3ForCausalLM (simlab's own modules or transformers') and
    transformers' Gemma2ForCausalLM (no q/k norms, one rotary table, softcapped attention)."""
    from simlab.models import blocks
    from simlab.models.gemma3 import ATTENTION, apply_rotary_pos_emb, masks_for

    config, body = model.config, model.model
    h = body.embed_tokens(ids)  # (B, T, D)
    position = (torch.arange(h.shape[1], device=h.device) + cache.get_seq_length()).unsqueeze(0)
    kinds = set(config.layer_types)
    if config.model_type == "gemma2":  # transformers' own masks, attention table and one rotary table
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        masks = _family_masks(config, cache, h, position)
        attend = ALL_ATTENTION_FUNCTIONS[config._attn_implementation]
        rotary = dict.fromkeys(kinds, body.rotary_emb.forward(h, position))
    else:
        masks = masks_for(config, cache, h.shape[1], h.shape[0], h.device)  # transformers' (tested)
        rotary = {kind: body.rotary_emb.forward(h, position, kind) for kind in kinds}
        attend = ATTENTION[config._attn_implementation]
    layers = body.layers[: config.num_hidden_layers]
    fast = blocks.blocks(model, layers, gemma=True) if h.shape[1] == 1 else None
    for i, layer in enumerate(layers):
        kind = config.layer_types[i]
        out = fast[i].run(h, cache, i, *rotary[kind], masks[kind]) if fast and fast[i] else None
        if out is not None:  # the layer in three kernel calls (models.blocks), its modules' bits
            h = out if i not in adds else out + adds[i]
            continue
        # the submodules read from _modules directly: nn.Module's __getattr__ costs ~1 us a lookup,
        # ~0.5 ms a step over Gemma 3 270M's 18 layers
        parts = layer._modules
        attn, mlp = parts["self_attn"], parts["mlp"]
        a, m = attn._modules, mlp._modules
        x = parts["input_layernorm"].forward(h)
        heads = (*x.shape[:-1], -1, attn.head_dim)
        q = a["q_proj"].forward(x).view(heads).transpose(1, 2)  # (B, H, T, d)
        k = a["k_proj"].forward(x).view(heads).transpose(1, 2)
        if "q_norm" in a:  # Gemma 3
            q, k = a["q_norm"].forward(q), a["k_norm"].forward(k)
        v = a["v_proj"].forward(x).view(heads).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *rotary[kind])
        k, v = cache.update(k, v, i)
        out, _ = attend(
            attn, q, k, v, masks[kind], dropout=0.0, scaling=attn.scaling,
            sliding_window=attn.sliding_window, position_ids=position,
            softcap=getattr(attn, "attn_logit_softcapping", None),
        )  # fmt: skip
        out = a["o_proj"].forward(out.reshape(*x.shape[:-1], -1).contiguous())
        h = h + parts["post_attention_layernorm"].forward(out)
        x = parts["pre_feedforward_layernorm"].forward(h)
        x = m["down_proj"].forward(m["act_fn"].forward(m["gate_proj"].forward(x)) * m["up_proj"].forward(x))
        h = h + parts["post_feedforward_layernorm"].forward(x)
        if i in adds:  # a steering vector at this block's output
            h = h + adds[i]
    logits = model.lm_head.forward(body.norm.forward(h))  # (B, T, V)
    cap = config.final_logit_softcapping
    return logits if cap is None else torch.tanh(logits / cap) * cap
