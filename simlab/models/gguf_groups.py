"""A GGUF tensor's own quantization as groups of integer codes: w = scale * code + offset.

Every format read here stores its weights that way (one scale and one offset per 32 weights, or
per 16 for Q6_K, codes of 4 to 8 bits), so the codes and the two per-group numbers are taken from
the file's blocks as they are, never re-rounded: `models.quant` hands them to simlab's own kernel
(`models.native`) or to torch's int4 one. The codes are read
back from `gguf`'s own dequantization (``round((w - offset) / scale)``) and checked to give it
back, so no bit layout is decoded twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROUP = 32


@dataclass
class Groups:
    """A (rows, cols) tensor as codes in 0..2**bits-1 with one scale and offset per `group` columns."""

    codes: np.ndarray  # (rows, cols) uint8
    scale: np.ndarray  # (rows, cols / group) float32
    offset: np.ndarray  # (rows, cols / group) float32
    bits: int
    bias: int | None  # offset == -bias * scale in every group (symmetric formats), else None
    group: int = GROUP


def _half(blocks: np.ndarray, at: int) -> np.ndarray:
    return blocks[:, at : at + 2].copy().view(np.float16).astype(np.float32)[:, 0]


def _k_scales(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's and Q5_K's per-32 scale d*sc and offset -dmin*m, as (blocks, 8) each (both lead
    their blocks with d, dmin and the same 12 bytes of 6-bit scales and minima)."""
    from gguf.quants import Q4_K

    sc, m = Q4_K.get_scale_min(blocks[:, 4:16].copy())
    return _half(blocks, 0)[:, None] * sc.astype(np.float32), -_half(blocks, 2)[:, None] * m.astype(
        np.float32
    )


def _symmetric(bits: int):
    """One float16 d per 32 weights: w = d * (code - 2**(bits-1)); Q8_0's signed q is code - 128."""

    def scales(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = _half(blocks, 0)[:, None]
        return d, -(2 ** (bits - 1)) * d

    return scales


def _q6_k_scales(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q6_K: 16 int8 scales times one float16 d per 256 weights; w = d * sc * (code - 32)."""
    d = blocks[:, 208:210].copy().view(np.float16).astype(np.float32)  # (blocks, 1)
    scale = d * blocks[:, 192:208].copy().view(np.int8).astype(np.float32)  # (blocks, 16)
    return scale, -32 * scale


def _with_min(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_1 and Q5_1: w = d * code + m."""
    return _half(blocks, 0)[:, None], _half(blocks, 2)[:, None]


# format name -> (bits per code, per-block (scale, offset) reader, symmetric bias or None, group)
FORMATS = {
    "Q4_0": (4, _symmetric(4), 8, 32),
    "Q5_0": (5, _symmetric(5), 16, 32),
    "Q8_0": (8, _symmetric(8), 128, 32),
    "Q4_1": (4, _with_min, None, 32),
    "Q4_K": (4, _k_scales, None, 32),
    "Q5_1": (5, _with_min, None, 32),
    "Q5_K": (5, _k_scales, None, 32),
    "Q6_K": (6, _q6_k_scales, 32, 16),
}


def read(tensor, rows_order: np.ndarray | None = None) -> Groups | None:
    """The groups of a `gguf.ReaderTensor`, or None when its format is not one read here; `rows_order`:
    the order the loaded weight holds the file's rows in (`by_module`), None for the file's own."""
    from gguf.quants import dequantize

    name = tensor.tensor_type.name
    if name not in FORMATS:
        return None
    bits, scales_of, bias, group = FORMATS[name]
    cols, rows = (int(n) for n in tensor.shape)  # GGUF lists the fastest-varying dimension first
    order = rows_order
    if cols % GROUP:
        return None
    raw = np.asarray(tensor.data)
    blocks = np.ascontiguousarray(raw).reshape(rows * cols // _block_size(name), -1)
    scale, offset = scales_of(blocks)  # (blocks, groups per block)
    scale = np.broadcast_to(scale, offset.shape).copy().reshape(rows, cols // group)
    offset = offset.reshape(rows, cols // group)
    values = dequantize(raw, tensor.tensor_type).reshape(rows, cols // group, group)
    safe = np.where(scale == 0, 1, scale)[..., None]
    codes = np.rint((values - offset[..., None]) / safe).clip(0, 2**bits - 1)
    back = (scale[..., None] * codes.astype(np.float32) + offset[..., None]).astype(np.float32)
    if not np.allclose(back, values, rtol=1e-6, atol=1e-7):
        return None  # a layout this reading does not know; the caller keeps the float weights
    codes = codes.reshape(rows, cols).astype(np.uint8)
    if order is not None:
        codes, scale, offset = codes[order], scale[order], offset[order]
    return Groups(codes, scale, offset, bits, bias, group)


def _block_size(name: str) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType[name]][0]


def by_module(path, model) -> dict[str, tuple]:
    """(the file's quantized tensor, the order of its rows in the loaded weight or None) by the name
    of the model's linear module that holds it (`lm_head` reads `token_embd` when the file has no
    separate output matrix, as tied models do). transformers reorders some tensors' rows as it
    loads them (Llama files store q and k with each head's rotary halves interleaved); the order is
    that of its own processor for the file's architecture, applied to the row numbers."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
    )

    reader = GGUFReader(str(path))
    field = reader.fields.get("general.architecture")
    arch = bytes(field.parts[-1]).decode("utf-8") if field else ""
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=model.config.to_dict())
    tensors = {t.name: t for t in reader.tensors}
    names = get_gguf_hf_weights_map(model, TensorProcessor())
    out = {
        hf[: -len(".weight")]: (tensors[name], _rows_order(processor, tensors[name]))
        for name, hf in names.items()
        if name in tensors and hf.endswith(".weight")
    }
    if "output.weight" not in tensors and "token_embd.weight" in tensors:
        out["lm_head"] = (tensors["token_embd.weight"], None)
    return out


def _rows_order(processor, tensor) -> np.ndarray | None:
    """The row numbers as `processor` leaves them, when it only reorders rows; else None."""
    rows = int(tensor.shape[-1])
    index = np.arange(rows, dtype=np.float64).reshape(rows, 1)
    try:
        moved = np.asarray(processor.process(weights=index, name=tensor.name).weights)
    except Exception:  # a processor that needs more than a name; the codes are checked later anyway
        return None
    if moved.shape != (rows, 1) or not np.array_equal(np.sort(moved[:, 0]), index[:, 0]):
        return None
    order = moved[:, 0].astype(np.int64)
    return None if np.array_equal(order, np.arange(rows)) else order
