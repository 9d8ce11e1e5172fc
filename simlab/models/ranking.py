"""The sampler's selections in simlab's C library (models.native): a row's k best tokens, the
tokens top-p keeps and the cdf draw, each the very result torch's ops give (tested), in a pass or
a few over the row."""

from __future__ import annotations

import ctypes

import torch

from simlab.models import native
from simlab.models.native import _ptr


def top_k(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest values of each row of x (B, N) and their indices, (B, k) each, in descending
    order with a tie going to the lower index: one pass in C (~0.1 ms for 262k values, where
    torch.topk takes ~0.8), or torch.topk where the library is not built (ties then in its order)."""
    lib = native.library()
    if lib is None or x.device.type != "cpu" or x.dim() != 2 or not 0 < k <= x.shape[1]:
        return torch.topk(x, k, dim=-1)
    x = x.float().contiguous()
    vals = torch.empty((x.shape[0], k), dtype=torch.float32)
    ids = torch.empty((x.shape[0], k), dtype=torch.int64)
    threads = torch.get_num_threads()
    if _declared(lib).simlab_top_k(_ptr(x), x.shape[0], x.shape[1], k, _ptr(vals), _ptr(ids), threads) != 0:
        raise MemoryError("simlab_top_k could not allocate its buffer")
    return vals, ids


def nucleus(values: torch.Tensor, probs: torch.Tensor, p: float) -> torch.Tensor | None:
    """Top-p's kept tokens among `values` (N,) with probabilities `probs` (N,), both float32 on the
    CPU: rank by value (ties in the order given), drop a token when the mass ranked above it
    reaches p; a bool (N,), the very mask torch's sort and cumsum give (tested), in one pass (a
    49,152-token row: ~0.4 ms, where torch's float sort alone took 3.9). None without the library."""
    lib = native.library()
    if lib is None or values.dtype != torch.float32 or probs.dtype != torch.float32:
        return None
    values, probs = values.contiguous(), probs.contiguous()
    kept = torch.empty(values.shape, dtype=torch.bool)
    if _declared(lib).simlab_nucleus(_ptr(values), _ptr(probs), values.numel(), p, _ptr(kept)) < 0:
        raise MemoryError("simlab_nucleus could not allocate its buffers")
    return kept


def _declared(lib):
    """The library with the sampler's calls' argument types declared (once per library)."""
    if not getattr(lib, "_sampler_declared", False):
        p, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
        lib.simlab_top_k.argtypes = [p, i64, i64, i64, p, p, ctypes.c_int]
        lib.simlab_top_k.restype = ctypes.c_int
        lib.simlab_nucleus.argtypes = [p, p, i64, f32, p]
        lib.simlab_nucleus.restype = ctypes.c_int
        lib.simlab_cdf_total.argtypes = [p, i64]
        lib.simlab_cdf_total.restype = ctypes.c_double
        lib.simlab_cdf_pick.argtypes = [p, i64, ctypes.c_double]
        lib.simlab_cdf_pick.restype = i64
        lib.simlab_above.argtypes = [p, i64, f32, p]
        lib.simlab_above.restype = i64
        lib.simlab_nucleus_row.argtypes = [p, i64, f32, p, p, i64, f32, p]
        lib.simlab_nucleus_row.restype = ctypes.c_int
        lib._sampler_declared = True
    return lib


def above(row: torch.Tensor, cut: float) -> torch.Tensor:
    """`row[row >= cut]` for a row (V,) of float32 on the CPU, in one pass in C (torch's mask and
    index take three); torch's where the library is not here."""
    lib = native.library()
    if lib is None or row.dtype != torch.float32 or row.device.type != "cpu" or row.dim() != 1:
        return row[row >= cut]
    row = row.contiguous()
    out = torch.empty_like(row)
    return out[: _declared(lib).simlab_above(_ptr(row), row.numel(), cut, _ptr(out))]


def nucleus_row(row: torch.Tensor, cut: float, values: torch.Tensor, probs: torch.Tensor, p: float):
    """`row` (V,) with -inf for the tokens top-p drops (torch's masked_fill of them): those below
    `cut` and those `nucleus` drops among `values` = above(row, cut) with probabilities `probs`. None
    without the library (or off the CPU, or not float32)."""
    lib = native.library()
    tensors = (row, values, probs)
    if lib is None or any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        return None
    row, values, probs = (t.contiguous() for t in tensors)
    out = torch.empty_like(row)
    args = (_ptr(row), row.numel(), cut, _ptr(values), _ptr(probs), values.numel(), p, _ptr(out))
    if _declared(lib).simlab_nucleus_row(*args) != 0:
        raise MemoryError("simlab_nucleus could not allocate its buffers")
    return out


def draw(probs: torch.Tensor, generator: torch.Generator) -> int | None:
    """`logits.sample`'s cdf draw from one row's probabilities (V,) float32 on the CPU: one uniform
    from the generator times the kept tokens' (probs != 0) total, and the first token whose
    cumulative mass in id order passes it; the sums torch's double cumsum makes, the token its
    searchsorted finds (tested), in a few passes (a 262,144-token row: ~0.2 ms, torch's steps ~0.9).
    None without the library, or where no token is kept (nothing drawn then)."""
    lib = native.library()
    if lib is None or probs.dtype != torch.float32 or probs.device.type != "cpu":
        return None
    lib = _declared(lib)
    probs = probs.contiguous()
    total = lib.simlab_cdf_total(_ptr(probs), probs.numel())
    if total == 0.0:
        return None
    u = torch.rand(1, generator=generator, dtype=torch.float64) * total
    pick = lib.simlab_cdf_pick(_ptr(probs), probs.numel(), float(u))
    return None if pick < 0 else pick
