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
        lib.simlab_cdf_totals.argtypes = [i64, p, i64, p, ctypes.c_int]
        lib.simlab_cdf_totals.restype = None
        lib.simlab_cdf_picks.argtypes = [i64, p, i64, p, p, ctypes.c_int]
        lib.simlab_cdf_picks.restype = None
        lib.simlab_above.argtypes = [p, i64, f32, p]
        lib.simlab_above.restype = i64
        lib.simlab_nucleus_rows.argtypes = [i64, p, i64, p, p, p, p, f32, p, ctypes.c_int]
        lib.simlab_nucleus_rows.restype = ctypes.c_int
        lib.simlab_levels.argtypes = [p, i64, i64, p, f32, ctypes.c_int, p, ctypes.c_int]
        lib.simlab_levels.restype = None
        lib._sampler_declared = True
    return lib


def levels(x: torch.Tensor, top: torch.Tensor, step: float, count: int) -> torch.Tensor:
    """How the values of each row of x (B, V) float32 lie below the row's `top` (B,): (B, count) int64,
    [r, j] = how many values v of row r have floor((top - v) / step) = j in float32 arithmetic
    (those further below, -inf and NaN not counted). One pass in C over the threads; torch where the
    library is not here (the same counts)."""
    x, top = x.float().contiguous(), top.float().contiguous()
    lib = native.library()
    if lib is None or x.device.type != "cpu" or x.dim() != 2:
        step32 = torch.tensor(step, dtype=torch.float32)
        d = (top[:, None] - x) * (1.0 / step32)
        d = torch.where((x > top[:, None] - count * step32) & (d >= 0) & (d < count), d, count)
        rows = d.floor().long() + torch.arange(x.shape[0], device=x.device)[:, None] * (count + 1)
        return torch.bincount(rows.flatten(), minlength=x.shape[0] * (count + 1)).view(-1, count + 1)[
            :, :count
        ]
    out = torch.empty((x.shape[0], count), dtype=torch.int64)
    args = (_ptr(x), x.shape[0], x.shape[1], _ptr(top), step, count, _ptr(out), torch.get_num_threads())
    _declared(lib).simlab_levels(*args)
    return out


def above(row: torch.Tensor, cut: float) -> torch.Tensor:
    """`row[row >= cut]` for a row (V,) of float32 on the CPU, in one pass in C (torch's mask and
    index take three); torch's where the library is not here."""
    lib = native.library()
    if lib is None or row.dtype != torch.float32 or row.device.type != "cpu" or row.dim() != 1:
        return row[row >= cut]
    row = row.contiguous()
    out = torch.empty_like(row)
    return out[: _declared(lib).simlab_above(_ptr(row), row.numel(), cut, _ptr(out))]


def nucleus_rows(rows: torch.Tensor, found, p: float) -> torch.Tensor | None:
    """Each row of `rows` (B, V) with -inf for the tokens top-p drops (torch's masked_fill of them):
    with found[r] = (cut, values, probs) of row r, those below `cut` and those `nucleus` drops among
    `values` = above(row, cut) with probabilities `probs`. The rows are spread over torch's threads,
    each one's bits as alone: (B, V), or None without the library (or off the CPU, or not float32)."""
    lib = native.library()
    tensors = [rows, *(t for _, values, probs in found for t in (values, probs))]
    if lib is None or any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        return None
    rows = rows.contiguous()
    held = [(values.contiguous(), probs.contiguous()) for _, values, probs in found]  # (alive for the call)
    b, out = len(found), torch.empty_like(rows)
    cuts = (ctypes.c_float * b)(*(cut for cut, _, _ in found))
    values, probs = ((ctypes.c_void_p * b)(*(pair[i].data_ptr() for pair in held)) for i in (0, 1))
    counts = (ctypes.c_int64 * b)(*(v.numel() for v, _ in held))
    args = (b, _ptr(rows), rows.shape[-1], cuts, values, probs, counts, p, _ptr(out), torch.get_num_threads())
    if _declared(lib).simlab_nucleus_rows(*args) != 0:
        raise MemoryError("simlab_nucleus could not allocate its buffers")
    return out


def draws(probs: torch.Tensor, generators) -> list[int | None] | None:
    """`logits.sample`'s cdf draw for each row of probs (B, V) float32 with its own generator: one
    uniform from the generator times the kept tokens' (probs != 0) total, and the first token whose
    cumulative mass in id order passes it; the sums torch's double cumsum makes, the token its
    searchsorted finds (tested), in a few passes (a 262,144-token row: ~0.2 ms, torch's steps ~0.9).
    A row's pick is None where no token is kept (nothing drawn then); the rows' passes are spread
    over torch's threads. None without the library (or off the CPU, or not float32)."""
    lib = native.library()
    if lib is None or probs.dtype != torch.float32 or probs.device.type != "cpu" or probs.dim() != 2:
        return None
    lib, probs, threads = _declared(lib), probs.contiguous(), torch.get_num_threads()
    b, n = probs.shape
    totals, u, picks = (ctypes.c_double * b)(), (ctypes.c_double * b)(), (ctypes.c_int64 * b)()
    lib.simlab_cdf_totals(b, _ptr(probs), n, totals, threads)
    for r, generator in enumerate(generators):  # (a row that keeps nothing draws nothing)
        u[r] = (
            float(torch.rand(1, generator=generator, dtype=torch.float64) * totals[r]) if totals[r] else -1.0
        )
    lib.simlab_cdf_picks(b, _ptr(probs), n, u, picks, threads)
    return [None if pick < 0 else pick for pick in picks]
