"""simlab's own quantized matrix product (qmatmul.c), built once per machine and called through ctypes.

The C source ships in the package; the first process that needs it compiles it with the system C
compiler (``cc -O3 -march=native -fopenmp``, about a second) into the simlab home, keyed by the
source, the compiler and the CPU, so every later start loads the built library. Without a compiler,
or when the build fails, `library()` is None and callers use torch's own kernels instead; `why()`
says what happened.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from pathlib import Path

import torch

from simlab.models import cbuild
from simlab.models.layout import pack

SOURCE = Path(__file__).with_name("qmatmul.c")
QK = 32
ONE_LEVEL = 256  # added to a product's bits: its activations rounded to one level of codes
HALF = 512  # added to a product's bits: its scales and offsets are float16 (held as int16 bits)

_state: dict[str, object] = {}


def _build(folder: Path, extra: tuple[str, ...] = (), say=None) -> Path:
    """The library built for this CPU (`extra`: more compiler flags, e.g. to leave out an
    instruction set), or the one built before."""
    # -ffp-contract=off: no multiply and add fused where the source did not say so (gcc's
    # default in -std=c99, not clang's), so every compiler and instruction set sums alike
    flags = ["-O3", "-march=native", *extra, "-ffp-contract=off", "-fopenmp"]
    building = "Building simlab's kernel for this CPU (once for each version of it; about 15 s on 2 cores)."
    return cbuild.build(SOURCE, folder, flags, (lambda: say(building)) if say else None)


def library(folder: Path | None = None, say=None):
    """The loaded library (ctypes.CDLL), built on first use (`say`: told when it is built now);
    None when it cannot be built here."""
    if "lib" in _state:
        return _state["lib"]
    if os.environ.get("SIMLAB_NATIVE", "1") == "0":
        _state.update(lib=None, why="SIMLAB_NATIVE=0")
        return None
    folder = cbuild.kernels_folder() if folder is None else folder
    try:
        lib = ctypes.CDLL(str(_build(folder, say=say)))
        _declare(lib)
        names = {5: "AVX-512 with VNNI and AMX", 4: "AVX-512 with VNNI", 3: "AVX2 with VNNI", 2: "AVX2"}
        simd = names.get(lib.simlab_qmatmul_simd(), "portable C")
        _state.update(lib=lib, why=f"built ({simd})")
    except (OSError, subprocess.SubprocessError) as exc:
        _state.update(lib=None, why=str(exc))
    return _state["lib"]


def why() -> str:
    """How the library came to be (or not), for /info and the benchmark."""
    return str(_state.get("why", "not loaded"))


def _declare(lib) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.simlab_qlinear.argtypes = [p, i64, i64, p, p, p, i32, i32, i64, p, p, i32]
    lib.simlab_qlinear_parts.argtypes = [p, i64, i64, i32, p, p, p, p, i32, i32, p, p, i32]
    lib.simlab_rows.argtypes = [p, p, p, i32, i32, i64, p, i64, p]
    lib.simlab_pack.argtypes = [i32, i32, p, p, p, i64, i64, p, p, p]
    lib.simlab_rms_norm.argtypes = [p, i64, i64, p, ctypes.c_float, p]
    f32 = ctypes.c_float
    lib.simlab_attention.argtypes = [p, p, p, p, p, p, p, i32, p, *[i64] * 7, f32, f32, i64, p, p, i32]
    lib.simlab_attention_work.argtypes = [i64] * 6
    lib.simlab_attention_work.restype = i64
    lib.simlab_rotary.argtypes = [p, i64, i64, i64, i64, p, p, i32, p]
    for name in ("qlinear", "qlinear_parts", "rows", "pack", "rms_norm", "attention", "rotary"):
        getattr(lib, f"simlab_{name}").restype = None


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


_local = threading.local()  # each thread's working memory for the kernel, kept between calls


def _scratch(m: int, k: int) -> torch.Tensor:
    """The kernel's working memory for M rows of K (simlab_qlinear_parts says how it is laid out):
    this thread's, grown when a call needs more (a decode step's products then allocate nothing).
    A caller holds the tensor until its C call returns: one over 16 MiB is not kept here."""
    size = 4 * m * k + 20 * m * (k // QK)  # (simlab_qlinear_scratch)
    held = getattr(_local, "scratch", None)
    if held is None or held.numel() < size:
        held = torch.empty(size, dtype=torch.int8)
        if size <= 1 << 24:  # a long prefill's need is not kept
            _local.scratch = held
    return held


def _product(x: torch.Tensor, weight: tuple, bits: int, group: int, n: int) -> torch.Tensor:
    """x (..., K) times a weight given by its addresses (codes, scale, offset), transposed: (..., N).
    Addresses go to C as plain ints (a ctypes object each cost ~0.2 us, ~6 us a call in all)."""
    x = x.contiguous()
    k = x.shape[-1]
    m = x.numel() // k if k else 0
    y = torch.empty((*x.shape[:-1], n), dtype=torch.float32)
    held = _scratch(m, k)  # (held until C returns: a large one is this call's alone)
    args = (*weight, bits, group, n, y.data_ptr(), held.data_ptr(), torch.get_num_threads())
    _state["lib"].simlab_qlinear(x.data_ptr(), m, k, *args)
    return y


def matmul_parts(x: torch.Tensor, layers, arrays: tuple | None = None) -> torch.Tensor:
    """x (M, K) float32 times several quantized weights of one layout (`NativeLinear`s) whose rows
    follow one another, transposed: (M, sum of their N), each part read where it lies. `arrays`:
    `part_arrays(layers)`, made once by a caller that calls often."""
    x = x.contiguous()
    m, k = x.shape
    ws, scales, offsets, ns, total = arrays or part_arrays(layers)
    held = _scratch(m, k)  # (held until C returns: a large one is this call's alone)
    y = torch.empty((m, total), dtype=torch.float32)
    first = layers[0]
    args = (ws, scales, offsets, ns, first.kernel_bits, first.group, y.data_ptr(), held.data_ptr())
    _state["lib"].simlab_qlinear_parts(x.data_ptr(), m, k, len(layers), *args, torch.get_num_threads())
    return y


def part_arrays(layers) -> tuple:
    """What `matmul_parts` passes to C for these layers: the addresses of their codes, scales and
    offsets, their row counts, and the sum of those."""
    count = len(layers)
    pointers = ctypes.c_void_p * count
    return (
        pointers(*(layer.codes.data_ptr() for layer in layers)),
        pointers(*(layer.scale.data_ptr() for layer in layers)),
        pointers(*(None if layer.offset is None else layer.offset.data_ptr() for layer in layers)),
        (ctypes.c_int64 * count)(*(layer.out_features for layer in layers)),
        sum(layer.out_features for layer in layers),
    )


def rows(ids: torch.Tensor, table: NativeLinear) -> torch.Tensor:
    """The layer's rows `ids` as float32, (len(ids), K)."""
    flat = ids.reshape(-1).to(torch.int64).contiguous()
    n, k = table.out_features, table.in_features
    low, high = (int(flat.min()), int(flat.max())) if flat.numel() else (0, 0)
    if low < 0 or high >= n:
        raise IndexError(f"token ids must be in 0..{n - 1}; got {low}..{high}")
    out = torch.empty((flat.numel(), k), dtype=torch.float32)
    codes, scale, offset = (_ptr(t) for t in (table.codes, table.scale, table.offset))
    lib = _state["lib"]
    lib.simlab_rows(
        codes, scale, offset, table.kernel_bits, table.group, k, _ptr(flat), flat.numel(), _ptr(out)
    )
    return out.reshape(*ids.shape, k)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor | None:
    """x cos + rotate_half(x) sin for x (B, H, T, D) and cos, sin (B or 1, T, D), as torch's ops
    give it bit for bit, in one call; None where it does not apply (the caller uses torch's ops)."""
    lib = _state.get("lib")
    tensors = (x, cos, sin)
    if lib is None or any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        return None
    if x.dim() != 4 or cos.dim() != 3 or cos.shape[0] not in (1, x.shape[0]) or cos.shape[1:] != x.shape[2:]:
        return None
    b, h, t, d = x.shape
    x, cos, sin = x.contiguous(), cos.contiguous(), sin.contiguous()
    out = torch.empty_like(x)
    lib.simlab_rotary(_ptr(x), b, h, t, d, _ptr(cos), _ptr(sin), int(cos.shape[0] == b and b > 1), _ptr(out))
    return out


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * scale over x's last dimension, float32 (x float32 on the CPU, the
    library built): one call, the same bits on every instruction set."""
    n, rows, scale = x.shape[-1], x.contiguous(), scale.contiguous()
    out = torch.empty(rows.shape, dtype=torch.float32)
    count = rows.numel() // n if n else 0
    _state["lib"].simlab_rms_norm(rows.data_ptr(), count, n, scale.data_ptr(), eps, out.data_ptr())
    return out


def _strides(t: torch.Tensor, count: int):
    return (ctypes.c_int64 * count)(*t.stride()[:count])


class NativeLinear(torch.nn.Module):
    """y = x W^T + b with W as a GGUF tensor's own codes (`bits` 4: 4-bit codes with a scale and
    offset per 32; 5: 5-bit codes with a scale per 32, and an offset per 32 or none (code - 16);
    6: 6-bit codes with a scale per 16, code - 32; 8: signed codes with a scale per `group` of 16
    or 32), in the kernel's layout (`pack`; `layout`: bits, group, N, K), through the kernel. The
    scales and offsets are float32, or float16 held as int16 bits (a file's own float16 ones, which
    torch's dtype casts then leave alone)."""

    def __init__(self, codes, scale, offset, layout: tuple[int, int, int, int], bias=None):
        super().__init__()
        bits, group, n, k = (int(v) for v in layout)
        half = scale.dtype == torch.int16
        if offset is not None and (offset.dtype == torch.int16) != half:
            raise ValueError("a layer's scales and offsets are both float16 or both float32")
        self.register_buffer("codes", codes.contiguous())
        self.register_buffer("scale", (scale if half else scale.float()).contiguous())
        self.register_buffer(
            "offset", None if offset is None else (offset if half else offset.float()).contiguous()
        )
        self.register_buffer("layout", torch.tensor([bits, group, n, k]))
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.bits, self.group = bits, group
        self.out_features, self.in_features = n, k
        self._base = bits + (HALF if half else 0)
        self.kernel_bits = self._base  # what C is told: bits, HALF, and ONE_LEVEL for activations to 8 bits
        self._layout = (self._base, group, n)
        self._weight: tuple | None = None  # the buffers' addresses for C, taken on first use

    @classmethod
    def of(cls, codes, scale, offset, bits: int, group: int, bias=None) -> NativeLinear:
        """The layer of a weight given as its file has it (`pack`), its scales and offsets kept as
        float16 where that holds them exactly (a file's float16 d: Q4_0, Q5_0, Q8_0 and the like)."""
        k = codes.shape[1] * (2 if bits == 4 else 1)
        packed = list(pack(codes, scale, offset, bits, group, _state.get("lib")))
        if all(t is None or _exact_in_half(t) for t in packed[1:]):
            packed[1:] = [None if t is None else t.half().view(torch.int16) for t in packed[1:]]
        return cls(*packed, (bits, group, scale.shape[0], k), bias)

    def round_to(self, levels: int) -> None:
        """Activations rounded to `levels` of 8-bit codes per 32: 2 (~15 bits, the default) or 1."""
        self.kernel_bits = self._base + (ONE_LEVEL if levels == 1 else 0)
        self._layout = (self.kernel_bits, self.group, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _product(x if x.dtype == torch.float32 else x.float(), self.addresses(), *self._layout)
        y = y if y.dtype == x.dtype else y.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def addresses(self) -> tuple:
        """The buffers' addresses for C (codes, scale, offset), taken on first use."""
        if self._weight is None:
            offset = None if self.offset is None else self.offset.data_ptr()
            self._weight = (self.codes.data_ptr(), self.scale.data_ptr(), offset)
        return self._weight

    def _apply(self, fn, recurse=True):  # .to(), .float() and the like may move the buffers
        self._weight = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # it copies into the buffers
        self._weight = None
        for name in ("scale", "offset"):  # float16 ones held as int16 bits: a cast would garble them
            given, held = state_dict.get(prefix + name), getattr(self, name)
            if given is not None and held is not None and given.dtype != held.dtype:
                raise ValueError(f"{prefix}{name}: {given.dtype} given for a layer holding {held.dtype}")
        return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def float_scales(self) -> None:
        """The scales and offsets held as float32 (the same values), e.g. to join float32 ones."""
        if self.scale.dtype == torch.int16:
            self.scale = self.scale.view(torch.float16).float()
            self.offset = None if self.offset is None else self.offset.view(torch.float16).float()
            self._base -= HALF
            self.round_to(1 if self.kernel_bits & ONE_LEVEL else 2)
            self._weight = None


def _exact_in_half(t: torch.Tensor) -> bool:
    """Whether float16 holds every value of a float32 tensor exactly (NaN never)."""
    return bool(torch.equal(t.half().float(), t))


class NativeGroup(torch.nn.Module):
    """Layers of one layout that read the same input, as one product (`matmul_parts`): their outputs
    side by side, each row's sums the same as the layer's alone, and no copy of their codes."""

    def __init__(self, layers: list[NativeLinear]):
        super().__init__()
        self.parts = torch.nn.ModuleList(layers)
        self.out_features = sum(layer.out_features for layer in layers)
        self.in_features = layers[0].in_features
        self._layers = layers
        self._arrays: tuple | None = None  # the buffers' addresses for C, made on first use

    def _apply(self, fn, recurse=True):  # .to(), .float() and the like may move the buffers
        self._arrays = None
        return super()._apply(fn, recurse)

    def arrays(self) -> tuple:
        """`part_arrays` of the layers, for C, made on first use."""
        if self._arrays is None:
            self._arrays = part_arrays(self._layers)
        return self._arrays

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        y = matmul_parts(rows if rows.dtype == torch.float32 else rows.float(), self._layers, self.arrays())
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if y.dtype == x.dtype else y.to(x.dtype)


class NativeEmbedding(torch.nn.Module):
    """An embedding table read from 8-bit codes (`rows`), times the model's embedding scale if it has
    one (Gemma's sqrt(d)). The unembedding can share the same codes (tied models)."""

    def __init__(self, table: NativeLinear, embed_scale: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.table = table
        self.register_buffer("embed_scale", embed_scale, persistent=False)
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features
        self.dtype = dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = self.table
        out = rows(input_ids, t)
        if self.embed_scale is not None:
            out = out * self.embed_scale.to(self.dtype)
        return out.to(self.dtype)
