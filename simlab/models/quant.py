"""Weight-only quantized linear layers: int8 (per output channel) and int4 (asymmetric, groups of 32),
through torch's own CPU kernels (`aten._weight_int8pack_mm`, `aten._weight_int4pack_mm_for_cpu`).

Every linear layer of the blocks and the unembedding (untied from the embedding, which stays as it
is) keeps its weights as int8 or packed int4 and dequantises them inside the kernel, so a decode step
reads 2x (int8) or ~3.5x (int4) fewer bytes than bfloat16. Activations go through the kernels in
bfloat16 (the kernels' fast path) and come back in the model's dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from simlab.models import native

WEIGHTS = ("float", "int8", "int4", "gguf")
GROUP = 32  # int4: one scale and offset per 32 weights along the input dimension
INNER_K_TILES = 2


def _weight_of(layer: torch.nn.Module) -> torch.Tensor | None:
    """A linear layer's weight as (out, in), or None for a module that is not one."""
    if isinstance(layer, torch.nn.Linear):
        return layer.weight.detach()
    if type(layer).__name__ == "Conv1D" and hasattr(layer, "nf"):  # GPT-2's linears store (in, out)
        return layer.weight.detach().t()
    return None


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """The tensor in memory aligned to 64 bytes, copied there if it is not (one read from a
    safetensors file often is not). torch's int8 kernel on AVX-512 crashes on unaligned weights."""
    t = t.contiguous()
    return t if t.data_ptr() % 64 == 0 else t.clone()


class Int8Linear(torch.nn.Module):
    """y = x W^T + b with W stored as int8 and one bfloat16 scale per output channel."""

    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight_int8", _aligned(weight_int8))  # (N, K)
        self.register_buffer("scale", _aligned(scale.to(torch.bfloat16)))  # (N,)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.out_features = weight_int8.shape[0]

    @classmethod
    def of(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> Int8Linear:
        w = weight.float()  # (N, K)
        scale = w.abs().amax(dim=-1).clamp(min=1e-12) / 127  # (N,)
        q = torch.round(w / scale.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
        return cls(q, scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)  # (M, K)
        y = torch.ops.aten._weight_int8pack_mm(rows, self.weight_int8, self.scale)  # (M, N)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias


class Int4Linear(torch.nn.Module):
    """y = x W^T + b with W as 4-bit codes q in 0..15 per group of 32 inputs: w = (q - 8) * scale + zero.

    With `parts` = 2, W is the sum of two such tensors laid side by side along the input (the low and
    the high 4 bits of 5- to 8-bit codes), and the input is repeated to meet both: one kernel call."""

    def __init__(self, packed: torch.Tensor, scale_zero: torch.Tensor, bias: torch.Tensor | None, parts=1):
        super().__init__()
        self.register_buffer("packed", _aligned(packed))  # (N, parts*K/2) codes in the kernel's layout
        self.register_buffer("scale_zero", _aligned(scale_zero.to(torch.bfloat16)))  # (parts*K/G, N, 2)
        self.register_buffer("parts", torch.tensor(int(parts)))
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.out_features = scale_zero.shape[1]
        self._parts = int(parts)

    @classmethod
    def of(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> Int4Linear:
        w = weight.float()  # (N, K)
        n, k = w.shape
        groups = w.reshape(n, k // GROUP, GROUP)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)  # (N, K/G)
        scale = ((high - low) / 15).clamp(min=1e-12)
        q = torch.round((groups - low.unsqueeze(-1)) / scale.unsqueeze(-1)).clamp(0, 15)
        zero = low + 8 * scale  # the kernel subtracts 8 from each code
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q.to(torch.int32).reshape(n, k), INNER_K_TILES
        )
        return cls(packed, torch.stack([scale.t(), zero.t()], dim=-1), bias)

    @classmethod
    def of_groups(cls, groups, bias: torch.Tensor | None) -> Int4Linear:
        """From a GGUF tensor's own groups (`models.gguf_groups`), codes as they are. The kernel keeps
        scales in bfloat16, so each scale is rounded once and every zero is chosen as an exact multiple
        of it: for symmetric formats the result is the file's tensor with bfloat16 scales, exactly."""
        exact = torch.from_numpy(groups.scale)  # (N, K/G)
        scale = exact.to(torch.bfloat16).float()
        codes = torch.from_numpy(groups.codes).to(torch.int32)  # (N, K)
        if groups.bits <= 4 and groups.bias is not None:
            parts = [(codes, scale, (8 - groups.bias) * scale)]
        elif groups.bits <= 4:  # the zero from the exact scale: the error is (q - 8) times the scale's
            parts = [(codes, scale, 8 * exact + torch.from_numpy(groups.offset))]
        elif groups.bias is None:  # u = 16h + l with an offset o: zl = 8s + o, zh = 128s, so s u + o
            parts = [
                (codes & 15, scale, 8 * exact + torch.from_numpy(groups.offset)),
                (codes >> 4, 16 * scale, 128 * scale),
            ]
        else:  # u = 16h + l: (l - 8) s + zl + (h - 8) 16s + zh = s u - bias s when zl + zh = (136 - bias) s
            high_zero = 0 if groups.bias == 128 else 128
            parts = [
                (codes & 15, scale, (136 - groups.bias - high_zero) * scale),
                (codes >> 4, 16 * scale, high_zero * scale),
            ]
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            torch.cat([c for c, _, _ in parts], dim=1).contiguous(), INNER_K_TILES
        )
        scale_zero = torch.cat([torch.stack([s.t(), z.t()], dim=-1) for _, s, z in parts], dim=0)
        return cls(packed, scale_zero, bias, parts=len(parts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)  # (M, K)
        if self._parts > 1:
            rows = rows.repeat(1, self._parts)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed, GROUP, self.scale_zero)  # (M, N)
        y = y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if self.bias is None else y + self.bias

    @staticmethod
    def fits(weight: torch.Tensor) -> bool:
        """The kernel's shape rules: whole groups along the input, whole tiles along both dimensions."""
        n, k = weight.shape
        return k % GROUP == 0 and k % (16 * INNER_K_TILES) == 0 and n % 8 == 0


def quantize(
    model: torch.nn.Module,
    weights: str,
    stored: dict[str, torch.Tensor] | None = None,
    groups_of: Callable[[str], object] | None = None,
    trust_file: bool = False,
) -> dict:
    """Replace the model's linear layers (and its unembedding) by `weights` ones, in place. Layers the
    int4 kernel cannot take (shapes) become int8. Returns the quantized tensors by name; given them
    back as `stored` (from a cache), the layers are rebuilt from them instead of quantized again.

    `gguf` takes each layer's codes from its GGUF file, through `groups_of(module name)`
    (`models.gguf_groups.Groups`, or None): a layer whose file format is not read that way (Q6_K's
    groups of 16, say), or whose codes do not give the loaded weight back, becomes int8. No layer stays
    float: torch's float matrix product sums a one-row product in another order than a batch's rows,
    and siblings must equal their seeds sampled alone; the two kernels compute each row alone.

    `trust_file`: the model's weights are not loaded (`models.gguf_codes`: on the meta device), so the
    codes are not checked against them, and a layer that cannot be read from the file raises
    LookupError instead of becoming int8."""
    if weights == "float":
        return {}
    native_kernel = weights == "gguf" and native.library() is not None
    # Replacing the unembedding module unties it from the embedding, which stays an exact lookup;
    # the config says so, so that nothing ties them again.
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    model.config.tie_word_embeddings = False
    out: dict[str, torch.Tensor] = {}
    for path, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            weight = _weight_of(child)
            if weight is None:
                continue
            key, bias = f"{path}.{name}".lstrip("."), getattr(child, "bias", None)
            layer = _stored_layer(stored, key, bias) if stored else None
            if layer is None and weights == "gguf" and groups_of and not stored:
                layer = _from_file(groups_of(key), weight, bias, native_kernel, check=not trust_file)
            if layer is None and trust_file:
                raise LookupError(f"{key} is not read from the file")
            if layer is None:
                use4 = weights == "int4" and Int4Linear.fits(weight)
                layer = (Int4Linear if use4 else Int8Linear).of(weight, bias)
            setattr(parent, name, layer)
            out.update({f"{key}.{k}": v for k, v in layer.named_buffers()})
    if native_kernel or (stored and "embedding.shared" in stored):
        out.update(_shared_embedding(model, stored, check=not trust_file, tied=tied))
    return out


def _shared_embedding(model: torch.nn.Module, stored, check: bool, tied: bool) -> dict[str, torch.Tensor]:
    """A tied model's input embedding read from the unembedding's own codes (no float copy of
    the table), when those codes give the loaded table back (checked on a few rows; unless `check`
    is off, when the model's config is to say that it is tied)."""
    if not hasattr(model, "get_output_embeddings"):
        return {}
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if not isinstance(head, native.NativeLinear):
        return {}
    if not (stored and "embedding.shared" in stored):
        weight = getattr(embedding, "weight", None)
        if weight is None or tuple(weight.shape) != (head.out_features, head.in_features):
            return {}
        if not (check or tied):
            return {}
        ids = torch.tensor(list(range(16)) + [weight.shape[0] - 1])
        got = native.rows(ids, head) if check else None
        if check and not torch.allclose(got, weight[ids].float(), rtol=2**-7, atol=1e-6):
            return {}
    scale = getattr(embedding, "embed_scale", None)
    model.set_input_embeddings(native.NativeEmbedding(head, scale, embedding.weight.dtype))
    return {"embedding.shared": torch.tensor(1)}


def _from_file(groups, weight: torch.Tensor, bias, native_kernel: bool, check: bool = True):
    """The file's own codes as a layer of simlab's kernel (or torch's int4 one), if they give back the
    loaded weight (some architectures' loaders permute rows; those layers become int8) and fit the
    kernel. Checked on a few rows, unless `check` is off (the weight is not loaded)."""
    if groups is None or groups.codes.shape != tuple(weight.shape):
        return None
    if not native_kernel and (groups.group != GROUP or not Int4Linear.fits(weight)):
        return None
    if not check:
        return _native_layer(groups, bias) if native_kernel else None
    rows = list(range(min(16, weight.shape[0]))) + [weight.shape[0] - 1]
    codes = torch.from_numpy(groups.codes[rows]).float().unflatten(-1, (-1, groups.group))
    values = codes * torch.from_numpy(groups.scale[rows]).unsqueeze(-1)
    values = (values + torch.from_numpy(groups.offset[rows]).unsqueeze(-1)).flatten(-2)
    if not torch.allclose(values, weight[rows].float(), rtol=2**-7, atol=1e-6):
        return None
    return _native_layer(groups, bias) if native_kernel else Int4Linear.of_groups(groups, bias)


def _native_layer(groups, bias) -> torch.nn.Module | None:
    """The codes as they are: 4-bit ones packed two to a byte with their scales and offsets; 5- and
    6-bit ones a code a byte (the layout keeps their low four bits as 4-bit ones and the rest apart),
    with their offsets (Q5_1, Q5_K) or, symmetric, without (Q5_0 and Q6_K: code - 16 or - 32);
    Q8_0's as signed bytes code - 128."""
    codes, scale = torch.from_numpy(groups.codes), torch.from_numpy(groups.scale)
    n = codes.shape[0]
    if groups.bits == 4 and groups.group == GROUP:
        pairs = codes.reshape(n, -1, GROUP)
        packed = (pairs[..., : GROUP // 2] | (pairs[..., GROUP // 2 :] << 4)).reshape(n, -1)
        return native.NativeLinear.of(packed, scale, torch.from_numpy(groups.offset), 4, GROUP, bias)
    if groups.bits == 8 and groups.bias == 128:  # code - bias fits a signed byte: the difference mod 256
        signed = torch.from_numpy((groups.codes - np.uint8(groups.bias)).view(np.int8))
        return native.NativeLinear.of(signed, scale, None, 8, groups.group, bias)
    if (groups.bits, groups.group) not in ((5, GROUP), (6, 16)):
        return None
    if groups.bias == 2 ** (groups.bits - 1):  # the kernel takes that from a code without an offset
        return native.NativeLinear.of(codes, scale, None, groups.bits, groups.group, bias)
    if groups.bias is None and groups.bits == 5:
        return native.NativeLinear.of(codes, scale, torch.from_numpy(groups.offset), 5, GROUP, bias)
    return None


def round_activations(model: torch.nn.Module, levels: int) -> int:
    """Every kernel layer of the model rounds its activations to `levels` of 8-bit codes per 32 (2:
    about 15 bits, the default; 1: 8 bits, as llama.cpp rounds them): how many layers there are."""
    layers = [m for m in model.modules() if isinstance(m, native.NativeLinear)]
    for layer in layers:
        layer.round_to(levels)
    model.__dict__.pop("_simlab_blocks", None)  # (the decode step's calls, made again with the new bits)
    return len(layers)


def _stored_layer(stored: dict[str, torch.Tensor], key: str, bias) -> torch.nn.Module | None:
    if f"{key}.codes" in stored:
        layout = [int(v) for v in stored[f"{key}.layout"]]  # (bits, group, N, K): the kernel's layout
        offset = stored.get(f"{key}.offset")
        return native.NativeLinear(stored[f"{key}.codes"], stored[f"{key}.scale"], offset, layout, bias)
    if f"{key}.packed" in stored:
        parts = int(stored.get(f"{key}.parts", torch.tensor(1)))
        return Int4Linear(stored[f"{key}.packed"], stored[f"{key}.scale_zero"], bias, parts)
    if f"{key}.weight_int8" in stored:
        return Int8Linear(stored[f"{key}.weight_int8"], stored[f"{key}.scale"], bias)
    return None
