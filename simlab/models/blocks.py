"""A decoder layer's decode step in three C calls (qmatmul.c's simlab_block_qkv, _mid and _out)
where its modules make about thirty torch ops and ten kernel calls, each with Python around it.

The calls run the very kernel functions the modules run (simlab's norm, products, rotary and
attention), in the same order on the same values, and add residuals and biases as torch adds them
(one float add each), so the logits are the modules' bit for bit (tested for each family). The KV
cache and the MLP's activation stay the model's own: the cache's update and the activation (torch's
GELU or SiLU, whose bits no C copy promises) run between the calls. Measured on the embedded model:
a decode step's Python and small torch calls went from ~5 ms to ~1 ms.

A layer takes this path only when every piece is simlab's (`Block.of` says which do), for one new
token a row on float32 CPU activations; anything else goes through the modules as before.
"""

from __future__ import annotations

import ctypes

import torch

from simlab.models import native
from simlab.models.fused import FusedPart, FusedRMSNorm, RowActivation
from simlab.models.native import NativeGroup, NativeLinear

_declared: set[int] = set()


def _lib():
    """The kernel library with the block functions' argument types declared (once)."""
    lib = native.library()
    if lib is None or id(lib) in _declared:
        return lib
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.simlab_block_qkv.argtypes = [
        p, i64, i64, p, f32, p, p, p, p, p, p, p, p, p, f32, i64, i64, i64, p, p, i32, p, p, p, p, i32,
    ]  # fmt: skip
    lib.simlab_block_mid.argtypes = [
        p, p, p, p, p, p, p, p, p, p, i64, p, i32, p, i64, i64, i64, i64, i64, f32, f32, p, p, p, i32, i32,
        p, p, f32, p, i64, p, p, p, p, i32, i32, p, p, p, i32,
    ]  # fmt: skip
    lib.simlab_block_out.argtypes = [p, i64, i64, p, p, p, i32, i32, p, f32, p, i64, p, p, i32]
    for fn in (lib.simlab_block_qkv, lib.simlab_block_mid, lib.simlab_block_out):
        fn.restype = i32
    _declared.add(id(lib))
    return lib


def _ok(status: int) -> None:
    if status != 0:
        raise MemoryError("simlab's decode step could not allocate its working memory")


def _hands_on(cache) -> bool:
    """Whether the cache's update only hands the keys to its layer: transformers' own Cache.update
    (a subclass may do more: engine.ragged's), not offloading."""
    from transformers.cache_utils import Cache

    return type(cache).update is Cache.update and not getattr(cache, "offloading", False)


def _scale(norm: FusedRMSNorm | None) -> int | None:
    """The address of what the norm multiplies by, or None for a norm that is not there."""
    return None if norm is None else norm.scale().data_ptr()


class Block:
    """One decoder layer's modules, as the three calls read them."""

    def __init__(self, layer: torch.nn.Module, config, gemma: bool):
        parts = layer._modules
        attn, mlp = parts["self_attn"], parts["mlp"]
        a, m = attn._modules, mlp._modules
        self.fused = a.get("fused_q_proj_k_proj_v_proj")  # (or q, k and v in layouts of their own)
        own = [a[n] for n in ("q_proj", "k_proj", "v_proj")]
        self.qkv_layers, self._arrays = own if self.fused is None else self.fused._layers, (None, None)
        self.qkv_kinds = [(ctypes.c_int * 3)(*(x.kernel_bits for x in self.qkv_layers))]
        self.qkv_kinds.append((ctypes.c_int * 3)(*(x.group for x in self.qkv_layers)))
        self.gate_up = m["fused_gate_proj_up_proj"]
        self.biases = [a[name].bias for name in ("q_proj", "k_proj", "v_proj")]
        self.o, self.down, self.act = a["o_proj"], m["down_proj"], m["act_fn"]
        self.norm_in = parts["input_layernorm"]
        if gemma:  # norms around attention and the MLP, and before the MLP
            self.post_attn, self.pre_mlp = (
                parts["post_attention_layernorm"],
                parts["pre_feedforward_layernorm"],
            )
            self.post_mlp = parts["post_feedforward_layernorm"]
        else:
            self.post_attn, self.pre_mlp, self.post_mlp = None, parts["post_attention_layernorm"], None
        self.q_norm, self.k_norm = a.get("q_norm"), a.get("k_norm")
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim, self.scaling = attn.head_dim, float(attn.scaling)
        self.softcap = float(getattr(attn, "attn_logit_softcapping", None) or 0.0)
        self.sizes = [part.out_features for part in self.gate_up._layers]
        self.widest = max(self.qkv_layers[0].in_features, self.down.in_features, self.o.in_features)

    @staticmethod
    def of(layer: torch.nn.Module, config, gemma: bool) -> Block | None:
        """The layer as a `Block`, or None where a piece is not simlab's (or not as the calls
        take it): then the layer runs through its modules."""
        parts = layer._modules
        attn, mlp = parts.get("self_attn"), parts.get("mlp")
        if attn is None or mlp is None:
            return None
        a, m = attn._modules, mlp._modules
        names = ["input_layernorm", "post_attention_layernorm"]
        names += ["pre_feedforward_layernorm", "post_feedforward_layernorm"] if gemma else []
        norms = [parts.get(name) for name in names]
        heads = [a.get(name) for name in ("q_norm", "k_norm") if name in a]
        if not all(isinstance(n, FusedRMSNorm) and n.gemma == gemma for n in norms + heads):
            return None
        if len({n.eps for n in norms[1:]}) != 1 or len({n.eps for n in heads}) > 1 or len(heads) == 1:
            return None
        qkv, gate_up = a.get("fused_q_proj_k_proj_v_proj"), m.get("fused_gate_proj_up_proj")
        kind = FusedPart if isinstance(qkv, NativeGroup) else NativeLinear  # (fused, or each its own)
        if not isinstance(gate_up, NativeGroup):
            return None
        if not all(isinstance(a.get(name), kind) for name in ("q_proj", "k_proj", "v_proj")):
            return None
        if not all(
            isinstance(m.get(name), FusedPart) and m[name].bias is None for name in ("gate_proj", "up_proj")
        ):
            return None
        o, down = a.get("o_proj"), m.get("down_proj")
        if not all(isinstance(x, NativeLinear) and x.bias is None for x in (o, down)):
            return None
        if not isinstance(m.get("act_fn"), RowActivation):
            return None
        weights = [a[name].bias for name in ("q_proj", "k_proj", "v_proj")] + [
            n.weight for n in norms + heads
        ]
        if any(w is not None and (w.dtype != torch.float32 or not w.is_contiguous()) for w in weights):
            return None  # (the calls read them as they lie, float32)
        block = Block(layer, config, gemma)
        sizes = [part.out_features for part in block.qkv_layers]
        d = block.head_dim
        if sizes != [block.heads * d, block.kv_heads * d, block.kv_heads * d] or block.heads % block.kv_heads:
            return None
        return block if block.heads // block.kv_heads <= 512 else None  # native_attention._fits, one query

    def run(
        self, h: torch.Tensor, cache, i: int, cos: torch.Tensor, sin: torch.Tensor, mask
    ) -> torch.Tensor | None:
        """The layer's output for h (B, 1, D) after `cache` (its keys and values appended), or None
        (nothing done) where these tensors are not what the calls take."""
        b, d = h.shape[0], h.shape[-1]
        floats = h.dtype == cos.dtype == sin.dtype == torch.float32 and h.is_cpu and cos.is_cpu and sin.is_cpu
        if not floats or h.dim() != 3 or h.shape[1] != 1 or not h.is_contiguous():
            return None
        if cos.dim() != 3 or cos.shape[0] not in (1, b) or cos.shape[1:] != (1, self.head_dim):
            return None
        lib, threads = _lib(), torch.get_num_threads()
        cos, sin = cos.contiguous(), sin.contiguous()
        held = native._scratch(b, self.widest)  # (held until the calls return: a large one is ours alone)
        scratch = held.data_ptr()
        q = torch.empty((b, self.heads, 1, self.head_dim))
        k, v = (torch.empty((b, self.kv_heads, 1, self.head_dim)) for _ in range(2))
        ws, scales, offsets, ns, _ = self._qkv_arrays()
        biases = (ctypes.c_void_p * 3)(*(None if x is None else x.data_ptr() for x in self.biases))
        qn = self.q_norm
        rows_own = int(cos.shape[0] == b and b > 1)  # a rotary table for each row (ragged rows)
        _ok(lib.simlab_block_qkv(
            h.data_ptr(), b, d, _scale(self.norm_in), self.norm_in.eps, ws, scales, offsets, ns, biases,
            *self.qkv_kinds, _scale(qn), _scale(self.k_norm), qn.eps if qn is not None else 0.0,
            self.heads, self.kv_heads, self.head_dim, cos.data_ptr(), sin.data_ptr(), rows_own,
            q.data_ptr(), k.data_ptr(), v.data_ptr(), scratch, threads,
        ))  # fmt: skip
        layer = cache.layers[i] if hasattr(cache, "layers") else None
        if hasattr(layer, "update_own"):  # siblings' layer holding the prompt's keys once (engine.kvcache)
            k, v = layer.update_own(k, v)
            prefix = layer.shared
        else:  # (the layer's own update where the cache only hands it on)
            k, v = layer.update(k, v) if layer is not None and _hands_on(cache) else cache.update(k, v, i)
            prefix = None
        if k.stride(-1) != 1 or v.stride(-1) != 1:
            k, v = k.contiguous(), v.contiguous()
        return self._rest(lib, h, q, (k, v, prefix), mask, scratch, threads)

    def _qkv_arrays(self) -> tuple:
        """`native.part_arrays` of q, k and v: the fused group's, or made again when a layer's
        buffers have moved."""
        if self.fused is not None:
            return self.fused.arrays()
        where = tuple(x.addresses() for x in self.qkv_layers)
        if self._arrays[0] != where:
            self._arrays = (where, native.part_arrays(self.qkv_layers))
        return self._arrays[1]

    def _rest(self, lib, h, q, kv, mask, scratch: int, threads: int) -> torch.Tensor:
        """Attention on, then the MLP: simlab_block_mid, the activation, simlab_block_out. kv: the
        keys and values to attend to, and the (keys, values) of a prefix every row shares or None."""
        k, v, prefix = kv
        shared = (None, None, None, None, 0)
        if prefix is not None:  # read where it lies: batch stride 0, every row the one prefix
            k0, v0 = (t if t.stride(-1) == 1 else t.contiguous() for t in prefix)
            row = ctypes.c_int64 * 3
            shared = (
                k0.data_ptr(),
                row(0, *k0.stride()[1:3]),
                v0.data_ptr(),
                row(0, *v0.stride()[1:3]),
                k0.shape[2],
            )
        b, d, length = h.shape[0], h.shape[-1], shared[4] + k.shape[2]
        kind, held, strides = 0, None, None
        if mask is not None:  # as native_attention._attend passes it
            kind = 1 if mask.dtype == torch.bool else 2
            held = (mask.to(torch.uint8) if kind == 1 else mask.float()).expand(b, self.heads, 1, length)
            strides = native._strides(held, 4)
        h2, gu = torch.empty_like(h), torch.empty((b, 1, sum(self.sizes)))
        ws, scales, offsets, ns, _ = self.gate_up.arrays()
        o, first = self.o, self.gate_up._layers[0]
        _ok(lib.simlab_block_mid(
            q.data_ptr(), native._strides(q, 3), k.data_ptr(), native._strides(k, 3), v.data_ptr(),
            native._strides(v, 3), *shared, None if held is None else held.data_ptr(), kind, strides, b,
            self.heads, self.kv_heads, length, self.head_dim, self.scaling, self.softcap, *o.addresses(),
            o.kernel_bits, o.group, _scale(self.post_attn), _scale(self.pre_mlp), self.pre_mlp.eps,
            h.data_ptr(), d, ws, scales, offsets, ns, first.kernel_bits, first.group, h2.data_ptr(),
            gu.data_ptr(), scratch, threads,
        ))  # fmt: skip
        gate, up = (
            gu.narrow(-1, 0, self.sizes[0]),
            gu.narrow(-1, self.sizes[0], self.sizes[1]),
        )  # as the modules
        x = (self.act.forward(gate) * up).contiguous()
        h3, down = torch.empty_like(h), self.down
        _ok(lib.simlab_block_out(
            x.data_ptr(), b, x.shape[-1], *down.addresses(), down.kernel_bits, down.group,
            _scale(self.post_mlp), self.pre_mlp.eps, h2.data_ptr(), d, h3.data_ptr(), scratch, threads,
        ))  # fmt: skip
        return h3


def blocks(model: torch.nn.Module, layers, gemma: bool) -> list | None:
    """Each layer's `Block` (None for one that runs through its modules), made once per model; None
    when the kernel library is not here or the model's attention is not simlab's."""
    config = model.config
    key = (len(layers), config._attn_implementation)  # (made again if the attention changes)
    held = model.__dict__.get("_simlab_blocks")
    if held is not None and held[0] == key:
        return held[1]
    made = None
    if _lib() is not None and config._attn_implementation == "simlab":
        made = [Block.of(layer, config, gemma) for layer in layers]
        made = made if any(made) else None
    model.__dict__["_simlab_blocks"] = (key, made)
    return made
