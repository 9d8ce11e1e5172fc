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
SLICE = 1 << 22  # values read at once: a 262,144-row table is not one float32 copy and its temporaries


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

    name = tensor.tensor_type.name
    if name not in FORMATS:
        return None
    bits, scales_of, bias, group = FORMATS[name]
    cols, rows = (int(n) for n in tensor.shape)  # GGUF lists the fastest-varying dimension first
    if cols % GROUP:
        return None
    raw = np.asarray(tensor.data).reshape(rows, -1)  # one row of blocks per weight row
    codes = np.empty((rows, cols), np.uint8)
    scale = np.empty((rows, cols // group), np.float32)
    offset = np.empty((rows, cols // group), np.float32)
    step = max(1, SLICE // cols)  # rows at a time: the float temporaries stay SLICE values long
    for at in range(0, rows, step):
        got = _read_rows(raw[at : at + step], tensor.tensor_type, name)
        if got is None:
            return None  # a layout this reading does not know; the caller keeps the float weights
        codes[at : at + step], scale[at : at + step], offset[at : at + step] = got
    if rows_order is not None:
        codes, scale, offset = codes[rows_order], scale[rows_order], offset[rows_order]
    return Groups(codes, scale, offset, bits, bias, group)


def _read_rows(raw: np.ndarray, kind, name: str) -> tuple | None:
    """Codes, scales and offsets of some whole rows of blocks, or None when the codes do not give
    `gguf`'s dequantization back."""
    from gguf.quants import dequantize

    bits, scales_of, _, group = FORMATS[name]
    rows = raw.shape[0]
    blocks = np.ascontiguousarray(raw).reshape(-1, _block_bytes(name))
    scale, offset = scales_of(blocks)  # (blocks, groups per block)
    scale = np.broadcast_to(scale, offset.shape).reshape(rows, -1).astype(np.float32)
    offset = offset.reshape(rows, -1).astype(np.float32, copy=False)
    values = dequantize(raw, kind).reshape(rows, -1, group)
    safe = np.where(scale == 0, 1, scale)[..., None]
    codes = np.rint((values - offset[..., None]) / safe).clip(0, 2**bits - 1)
    back = (scale[..., None] * codes.astype(np.float32) + offset[..., None]).astype(np.float32)
    if not np.allclose(back, values, rtol=1e-6, atol=1e-7):
        return None
    return codes.reshape(rows, -1).astype(np.uint8), scale, offset


def _block_bytes(name: str) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType[name]][1]


@dataclass
class FileTensor:
    """A GGUF tensor as `gguf.ReaderTensor` has it: shape fastest dimension first, data memory-mapped."""

    name: str
    shape: tuple[int, ...]
    tensor_type: object  # gguf.GGMLQuantizationType
    data: np.ndarray
    mapped: object = None  # (the file's mmap.mmap, where the data starts)
    at: int = 0

    def release(self) -> None:
        """Give back the pages of the file read for this tensor (read again if used again)."""
        import mmap

        if self.mapped is not None and self.data.nbytes:
            start = self.at // mmap.PAGESIZE * mmap.PAGESIZE
            self.mapped.madvise(mmap.MADV_DONTNEED, start, self.at + self.data.nbytes - start)


def file_tensors(path) -> tuple[str, list]:
    """(the file's architecture, its tensors), from transformers' header reader: 0.04 s, where
    `gguf.GGUFReader` makes an object per slice of the vocabulary (about 0.5 GB and 10-20 s for
    262,144 tokens); that reader only when transformers' private one is gone or refuses the file."""
    import mmap
    from math import prod

    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import quant_shape_to_byte_shape

    try:
        metadata, entries, start = _table(path)
    except Exception:  # noqa: BLE001 - another transformers: gguf's own reader
        file = GGUFReader(str(path))
        field = file.fields.get("general.architecture")
        return (bytes(field.parts[-1]).decode("utf-8") if field else ""), list(file.tensors)
    with open(path, "rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    blob = np.frombuffer(mapped, np.uint8)
    floats = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}
    tensors = []
    for name, dims, kind, offset in entries:  # dims slowest first, as numpy's
        kind = GGMLQuantizationType(kind)
        dtype = floats.get(kind, np.uint8)
        shape = dims if dtype is not np.uint8 else quant_shape_to_byte_shape(dims, kind)
        size = prod(shape) * np.dtype(dtype).itemsize
        data = blob[start + offset : start + offset + size].view(dtype).reshape(shape)
        tensors.append(FileTensor(name, tuple(reversed(dims)), kind, data, mapped, start + offset))
    return str(metadata.get("general.architecture", "")), tensors


def header_size(path) -> int:
    """Where the file's tensor data begins (its size, when transformers' header reader fails)."""
    import os

    try:
        return _table(path)[2]
    except Exception:  # noqa: BLE001 - another transformers: the whole file
        return os.path.getsize(path)


def _table(path) -> tuple[dict, list, int]:
    """(the metadata, the tensor table's entries, where the tensor data begins), by transformers'
    private header reader (raises where that reader is gone or refuses the file)."""
    from transformers.integrations.gguf import reader

    blob = reader._mapped(str(path))
    metadata, count, at = reader._read_metadata(blob, str(path))
    entries, at = reader._read_tensor_table(blob, count, at)
    alignment = metadata.get("general.alignment", 32)
    return metadata, entries, (at + alignment - 1) // alignment * alignment


def by_module(path, model, processor_config: dict, strict: bool = False) -> dict[str, tuple]:
    """(the file's quantized tensor, the order of its rows in the loaded weight or None) by the name
    of the model's linear module that holds it (`lm_head` reads `token_embd` when the file has no
    separate output matrix, as tied models do). transformers reorders some tensors' rows as it
    loads them (Llama files store q and k with each head's rotary halves interleaved); the order is
    that of its own processor for the file's architecture, applied to the row numbers. `strict`:
    leave out tensors whose processor does more than reorder rows (else they are read in the file's
    order, for the caller to check against its floats). `processor_config`: the config the processor
    is given, as transformers' loader gives it (`models.gguf_codes.loader_config`)."""
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
    )

    arch, listed = file_tensors(path)
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=processor_config)
    tensors = {t.name: t for t in listed}
    names = get_gguf_hf_weights_map(model, TensorProcessor())
    out = {}
    for name, hf in names.items():
        if name in tensors and hf.endswith(".weight"):
            order = _rows_order(processor, tensors[name])
            if not (strict and order is MOVED):
                out[hf[: -len(".weight")]] = (tensors[name], None if order is MOVED else order)
    if "output.weight" not in tensors and "token_embd.weight" in tensors:
        out["lm_head"] = (tensors["token_embd.weight"], None)
    return out


MOVED = object()  # a processor that changes a tensor otherwise than by reordering its rows


def _rows_order(processor, tensor) -> np.ndarray | object | None:
    """The row numbers as `processor` leaves them when it reorders rows, None when it leaves them
    in the file's order, else MOVED."""
    rows = int(tensor.shape[-1])
    index = np.arange(rows, dtype=np.float64).reshape(rows, 1)
    try:
        moved = np.asarray(processor.process(weights=index, name=tensor.name).weights)
    except Exception:  # a processor that needs more than a name
        return MOVED
    if moved.shape != (rows, 1) or not np.array_equal(np.sort(moved[:, 0]), index[:, 0]):
        return MOVED
    order = moved[:, 0].astype(np.int64)
    return None if np.array_equal(order, np.arange(rows)) else order
