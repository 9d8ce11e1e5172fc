"""simlab's own kernel (models/qmatmul.c through models/native): a GGUF tensor's codes kept as they
are, multiplied without a second rounding of the weights; each row alone whatever the batch; the
fused layers and norms of a lean decode step give the very same numbers as the modules they replace.

The blocks are random bytes in each format's layout (`test_gguf_weights.random_tensor`); `gguf`'s
dequantiser is the reference for the weights, a float64 product for the arithmetic."""

import math
import shutil
from unittest.mock import patch

import numpy as np
import pytest
import torch
from conftest import tiny_llama_style
from test_gguf_weights import COLS, ROWS, random_tensor, reference

from simlab.models import gguf_groups, layout, lean, native, native_attention, ranking
from simlab.models.quant import _native_layer

FORMATS = ["Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"]


@pytest.fixture(scope="module", autouse=True)
def kernel():
    if native.library() is None:
        if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
            pytest.skip("no C compiler here: simlab falls back to torch's kernel (tested below)")
        pytest.fail(f"the kernel did not build here, with a compiler present: {native.why()}")


def unpacked(layer: native.NativeLinear) -> torch.Tensor:
    """The (N, K) weight a layer's buffers hold, in float64, read back through `layout.unpack`. 4 bits:
    byte j of a group of 32 holds code j (low nibble) and code 16 + j (high nibble); 5 and 6 bits
    without offsets: code - 16 and code - 32."""
    codes, scale, offset = layout.unpack(layer)
    n = layer.out_features
    if layer.bits == 4:
        packed = codes.reshape(n, -1, 16)
        codes = torch.cat([packed & 15, packed >> 4], dim=-1).reshape(n, -1)
    codes = codes.double()
    if layer.bits in (5, 6) and offset is None:
        codes = codes - 2 ** (layer.bits - 1)
    values = codes.unflatten(-1, (-1, layer.group)) * scale.double().unsqueeze(-1)
    if offset is not None:  # Q4_*, Q5_1, Q5_K: unsigned codes and an offset per 32
        values = values.flatten(-2).unflatten(-1, (-1, 32)) + offset.double().unsqueeze(-1)
    return values.flatten(-2)


def matmul(x: torch.Tensor, codes, scale, offset, bits: int, group: int) -> torch.Tensor:
    """x times a weight given as its file has it (`layout.pack`), transposed."""
    return native.NativeLinear.of(codes, scale, offset, bits, group)(x)


def file_layout(layer: native.NativeLinear, rows: int | None = None, blocks: int | None = None) -> tuple:
    """The layer's codes, scales and offsets as its file has them, cut to its first rows and blocks."""
    codes, scale, offset = layout.unpack(layer)
    per, width = 32 // layer.group, (16 if layer.bits == 4 else 32)
    cols = slice(None) if blocks is None else slice(0, blocks)
    return (
        codes[:rows, : None if blocks is None else blocks * width].contiguous(),
        scale[:rows, : None if blocks is None else blocks * per].contiguous(),
        None if offset is None else offset[:rows, cols].contiguous(),
    )


def rounded(blocks: torch.Tensor, d: torch.Tensor):
    """Per block of 32 (last dim), signed codes with scale d, as floats."""
    inverse = torch.where(d > 0, 1 / torch.where(d > 0, d, 1), 0)
    return torch.round(blocks * inverse).clamp(-127, 127) * d


def quantized_rows(x: torch.Tensor, levels: int = 2):
    """The activations as the kernel rounds them: per 32, codes with scale max|x| / 127, then codes
    with 1/256 of that scale for what the first left (`levels` 1: the first codes alone)."""
    blocks = x.float().unflatten(-1, (-1, 32))
    d = blocks.abs().amax(-1, keepdim=True) / 127
    first = rounded(blocks, d)
    if levels == 1:
        return first.double().flatten(-2)
    return (first.double() + rounded(blocks - first, d / 256).double()).flatten(-2)


def one_level(layer: native.NativeLinear) -> native.NativeLinear:
    """The layer with its activations rounded to one level of codes (`--weights gguf-a8`)."""
    layer.round_to(1)
    return layer


@pytest.mark.parametrize("kind", FORMATS)
def test_the_layer_holds_the_files_weights_exactly(kind):
    tensor = random_tensor(kind, seed=5)
    layer = _native_layer(gguf_groups.read(tensor), None)
    assert isinstance(layer, native.NativeLinear)
    assert layer.bits == int(kind[1])
    assert layer.group == (16 if kind == "Q6_K" else 32)
    # no rounding at all, where gguf rounds d sc q - dmin m once to float32 (Q5_K); a file's float16
    # scales (and Q4_1's and Q5_1's float16 offsets) stay float16, the K-quants' products d sc float32
    assert torch.equal(unpacked(layer).float(), reference(tensor))
    assert (layer.scale.dtype == torch.int16) == (kind in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"))
    assert layer.kernel_bits == layer.bits + (native.HALF if layer.scale.dtype == torch.int16 else 0)
    bytes_per_weight = layer.codes.numel() * layer.codes.element_size() / (ROWS * COLS)
    assert bytes_per_weight == layer.bits / 8  # q5 and q6: four bits a code, and one or two in planes


@pytest.mark.parametrize("kind", FORMATS)
def test_the_kernels_layout_is_made_alike_in_c_and_torch_and_gives_the_file_back(kind):
    """`layout.pack` in one C pass (what loading does) and with torch's ops make the same bytes,
    37 rows included (a last group of 5, padded); `layout.unpack` gives the file's layout back."""
    layer = _native_layer(gguf_groups.read(random_tensor(kind, seed=11)), None)
    given = file_layout(layer, rows=37)
    in_c = layout.pack(*given, layer.bits, layer.group, native.library())
    in_torch = layout.pack(*given, layer.bits, layer.group)
    assert in_c[0].shape == (3, COLS // 32 * layout.block_bytes(layer.bits))
    for ours, theirs in zip(in_c, in_torch):
        assert (ours is None and theirs is None) or torch.equal(ours, theirs)
    back = layout.unpack(native.NativeLinear(*in_c, (layer.bits, layer.group, 37, COLS)))
    for ours, theirs in zip(back, given):
        assert (ours is None and theirs is None) or torch.equal(ours, theirs)


@pytest.mark.parametrize("kind", FORMATS)
def test_the_product_is_the_weights_times_the_rounded_activations(kind):
    tensor = random_tensor(kind, seed=6)
    layer = _native_layer(gguf_groups.read(tensor), None)
    torch.manual_seed(0)
    x = torch.randn(5, COLS)
    got = layer(x).double()
    exact = quantized_rows(x) @ reference(tensor).double().t()
    assert torch.allclose(got, exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())
    plain = x.double() @ reference(tensor).double().t()  # two levels: ~15 bits per activation
    assert (got - plain).abs().max() < 2e-4 * plain.abs().max()


@pytest.mark.parametrize("kind", FORMATS)
def test_one_level_is_the_weights_times_the_activations_rounded_once(kind):
    """`--weights gguf-a8`: each block of 32 activations as one level of 8-bit codes, as llama.cpp's
    Q8_0 rounds them (where two levels keep ~15 bits); the layer's own codes are untouched."""
    tensor = random_tensor(kind, seed=6)
    layer = one_level(_native_layer(gguf_groups.read(tensor), None))
    assert layer.kernel_bits & ~native.HALF == layer.bits + native.ONE_LEVEL
    torch.manual_seed(0)
    x = torch.randn(5, COLS)
    got = layer(x).double()
    exact = quantized_rows(x, levels=1) @ reference(tensor).double().t()
    assert torch.allclose(got, exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())
    two = quantized_rows(x) @ reference(tensor).double().t()
    assert (got - two).abs().max() > 1e-3 * two.abs().max()  # (not the two levels' product)
    layer.round_to(2)
    assert layer.kernel_bits & ~native.HALF == layer.bits and torch.allclose(
        layer(x).double(), two, rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("kind", ["Q4_K", "Q8_0", "Q6_K"])
def test_a_nan_or_infinite_input_gives_nan_and_a_tiny_one_no_garbage(kind):
    """A NaN or infinite activation makes every output it goes into NaN, as the float product's would
    be (a diverging model shows as NaN, not as plausible numbers); a block too small for its scale's
    inverse to be a float counts as zeros (it gave codes of -127 before)."""
    layer = _native_layer(gguf_groups.read(random_tensor(kind, seed=12)), None)
    torch.manual_seed(4)
    x = torch.randn(5, COLS)
    x[1, 40], x[2, 7], x[3, :32] = float("nan"), float("inf"), 1e-38
    y = layer(x)
    assert torch.isfinite(y[0]).all() and torch.isnan(y[1]).all() and torch.isnan(y[2]).all()
    clean = x.clone()
    clean[3, :32] = 0
    assert torch.equal(y[3], layer(clean[3:4])[0]) and torch.equal(y[4], layer(x[4:5])[0])


@pytest.mark.parametrize("levels", [2, 1])
@pytest.mark.parametrize("kind", ["Q4_K", "Q8_0", "Q6_K", "Q5_0", "Q5_K"])
def test_each_row_is_the_same_alone_or_in_any_batch(kind, levels):
    layer = _native_layer(gguf_groups.read(random_tensor(kind, seed=7)), None)
    layer.round_to(levels)
    torch.manual_seed(1)
    x = torch.randn(40, COLS)
    alone = torch.cat([layer(x[i : i + 1]) for i in range(40)])
    # batches of up to 8 rows (4 on AVX2) share the weights' unpacking; past 32 (16) q5's and q6's
    # codes are widened
    for size in (2, 3, 4, 5, 9, 40):
        together = torch.cat([layer(x[i : i + size]) for i in range(0, 40, size)])
        assert torch.equal(together, alone), size
    # 37 weight rows: two groups of 16 and a last one of 5 (padded), from 8 inputs taken 8 at a time
    cut = file_layout(layer, rows=37)
    cut_layer = native.NativeLinear.of(*cut, layer.bits, layer.group)
    cut_layer.round_to(levels)
    alone = torch.cat([cut_layer(x[i : i + 1]) for i in range(40)])
    assert torch.equal(cut_layer(x), alone)


@pytest.mark.parametrize(
    "without, simd",
    [
        (("-mno-avx512f",), (2, 3)),
        (("-mno-avx512dq",), (3,)),  # AVX2 with AVX-512's 256-bit vpdpwssd, on a CPU with VNNI
        (("-mno-avx512f", "-mno-avxvnni", "-mno-avx512vnni"), (2,)),
        (("-mno-avx512f", "-mno-avx2", "-mno-fma"), (0,)),
        (("-mno-avx512f", "-mno-f16c"), (2, 3)),  # float16 scales converted without F16C
        (("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"), (4,)),  # AVX-512's tile for AMX's 16 rows
    ],
    ids=["no-avx512", "avx2-vnni", "avx2-only", "portable-c", "avx2-no-f16c", "avx512-no-amx"],
)
def test_every_instruction_set_gives_the_same_bits(monkeypatch, tmp_path, without, simd):
    """AVX-512 sums 16 weight rows' bytes per vector with VNNI (q8's codes plus 128), AVX2 8 on
    16-bit values (vpmaddwd, or VNNI's vpdpwssd): the integers of each scale group are exact, the
    float part runs in the same order, and the portable C writes that order out, so replies stay the
    same bit for bit on every machine; AMX's tiles (a prefill's rows 16 at a time, on CPUs that have
    them) sum the same integers. A build for an instruction set this CPU lacks cannot run here: the
    paths below it are the ones checked."""
    import ctypes

    if native.library().simlab_qmatmul_simd() <= max(simd):
        pytest.skip(f"this CPU runs that path already ({native.why()})")
    other = ctypes.CDLL(str(native._build(tmp_path, without)))
    native._declare(other)
    assert other.simlab_qmatmul_simd() in simd
    torch.manual_seed(2)
    x = torch.randn(19, COLS)  # 8 input rows at a time, then 3 (AMX: 16, then 3)
    many = torch.randn(40, COLS)  # past 32 rows (16 on AVX2): q5's and q6's codes widened to bytes
    odd = x.clone()
    odd[9, 3], odd[10, 33], odd[10, 64:96] = float("nan"), float("-inf"), 1e-38  # NaN outputs, a tiny block
    blocks = 7  # an odd count of 32-wide blocks, and 37 weight rows: a last group of 5
    part = odd[:, : blocks * 32]
    for kind in FORMATS:
        layer = _native_layer(gguf_groups.read(random_tensor(kind, seed=9)), None)
        cut = file_layout(layer, rows=37, blocks=blocks)
        # (AVX2 takes one or two rows with both halves of a group in one pass, more rows half by half;
        # one level of activation codes: AVX-512 leaves out the second level's products)
        once = one_level(native.NativeLinear.of(*cut, layer.bits, layer.group))

        def products(layer=layer, once=once, cut=cut):
            cut_product = matmul(part, *cut, layer.bits, layer.group)
            return [layer(odd), cut_product, layer(x[:2]), once(part), once(part[:1]), layer(many)]

        fast = products()
        monkeypatch.setitem(native._state, "lib", other)
        again = products()
        for a, b in zip(again, fast):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=kind)
        monkeypatch.undo()
    logits = torch.randn(3, 262144) * 3
    for k in (5, 256):
        values, ids = ranking.top_k(logits, k)
        monkeypatch.setitem(native._state, "lib", other)
        assert torch.equal(ranking.top_k(logits, k)[1], ids), k
        monkeypatch.undo()
    flat = torch.randn(60_000) * 0.3  # top-p's nucleus near the cut and the cdf draw: exact sums
    probs = flat.softmax(-1)
    cut = float(flat.quantile(0.02))

    def sampler():
        above = ranking.above(flat, cut)
        row = ranking.nucleus_rows(flat[None], [(cut, above, probs[flat >= cut])], 0.95)[0]
        return (
            ranking.nucleus(flat, probs, 0.95),
            row,
            ranking.draws(probs[None], [torch.Generator().manual_seed(3)])[0],
        )

    ours = sampler()
    monkeypatch.setitem(native._state, "lib", other)
    theirs = sampler()
    assert torch.equal(theirs[0], ours[0]) and torch.equal(theirs[1], ours[1]) and theirs[2] == ours[2]
    monkeypatch.undo()
    normed = native.rms_norm(x, x[0], 1e-6)
    monkeypatch.setitem(native._state, "lib", other)
    assert torch.equal(native.rms_norm(x, x[0], 1e-6), normed)  # the sums run in one order everywhere
    monkeypatch.undo()
    for b, h, kh, t, length, d in ((2, 4, 1, 1, 300, 256), (1, 6, 2, 9, 140, 80)):  # d: a tail past 16s
        q, k, v = torch.randn(b, h, t, d), torch.randn(b, kh, length, d), torch.randn(b, kh, length, d)
        mask = torch.rand(1, 1, t, length) > 0.3
        ours = (
            native_attention.attend(q, k, v, mask, 0.1, softcap=30.0),
            native_attention.attend(q, k, v, None, 0.1, 0.0, length - t),
        )
        monkeypatch.setitem(native._state, "lib", other)
        theirs = (
            native_attention.attend(q, k, v, mask, 0.1, softcap=30.0),
            native_attention.attend(q, k, v, None, 0.1, 0.0, length - t),
        )
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1]), (t, d)
        monkeypatch.undo()


def test_a_product_too_big_to_keep_its_working_memory_holds_it_while_it_runs():
    """Working memory over 16 MiB is not kept between calls (a long prefill's): the call holds it
    until the kernel returns. It was freed as its address was taken, and a 1,700-row product of
    2,048 wrote into unmapped memory (a crash; 4,200 rows now need that much)."""
    torch.manual_seed(3)
    codes = torch.randint(-127, 128, (64, 2048), dtype=torch.int8)
    scale = torch.rand(64, 2048 // 32) / 100
    x = torch.randn(4200, 2048)
    assert native._scratch(4200, 2048).numel() > 1 << 24  # past what native._scratch keeps
    layer = native.NativeLinear.of(codes, scale, None, 8, 32)
    whole = layer(x)
    for row in (0, 977, 4199):
        assert torch.equal(whole[row : row + 1], layer(x[row : row + 1]))


def test_a_row_of_zeros_gives_the_bias_alone():
    tensor = random_tensor("Q4_K", seed=8)
    bias = torch.randn(ROWS)
    layer = _native_layer(gguf_groups.read(tensor), bias)
    assert torch.equal(layer(torch.zeros(2, COLS)), bias.expand(2, -1))


@pytest.mark.parametrize("kind", FORMATS)
def test_an_embedding_reads_its_rows_from_the_codes(kind):
    tensor = random_tensor(kind, seed=9)
    table = _native_layer(gguf_groups.read(tensor), None)
    embedding = native.NativeEmbedding(table, torch.tensor(2.5), torch.float32)
    ids = torch.tensor([[3, 0, ROWS - 1], [7, 7, 1]])
    expected = reference(tensor)[ids] * 2.5
    assert torch.equal(embedding(ids), expected)
    assert embedding.num_embeddings == ROWS and embedding.embedding_dim == COLS
    with pytest.raises(IndexError, match="token ids must be in 0..63"):
        embedding(torch.tensor([[ROWS]]))  # not a read past the table


@pytest.mark.parametrize("kind", ["Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0", "Q4_0"])
def test_five_and_six_bit_codes_and_half_scales_give_the_wide_layouts_bits(kind):
    """q5 and q6 codes (their high bits in planes) and float16 scales hold what signed bytes and
    float32 scales held, in 5/8 to 3/4 of the codes' bytes and half the scales': each product is
    the same bits as before, so replies sampled before the change replay to the bit."""
    groups = gguf_groups.read(random_tensor(kind, seed=13))
    layer = _native_layer(groups, None)
    wide_codes = groups.codes.astype(np.int16) - (groups.bias or 0)
    bits = 4 if kind == "Q4_0" else 8
    codes = torch.from_numpy(wide_codes.astype(np.int8 if bits == 8 else np.uint8))
    if bits == 4:  # (the file's nibble pairs, as it had them)
        pairs = torch.from_numpy(groups.codes).reshape(ROWS, -1, 32)
        codes = (pairs[..., :16] | (pairs[..., 16:] << 4)).reshape(ROWS, -1)
    offset = torch.from_numpy(groups.offset) if groups.bias is None or bits == 4 else None
    wide = native.NativeLinear(
        *layout.pack(codes, torch.from_numpy(groups.scale), offset, bits, groups.group, native.library()),
        (bits, groups.group, ROWS, COLS),
    )
    assert wide.scale.dtype == torch.float32 and layer.codes.numel() * bits == wide.codes.numel() * layer.bits
    torch.manual_seed(3)
    x = torch.randn(40, COLS)  # (past 32 rows, 16 on AVX2: q5's and q6's codes widened to bytes)
    for levels in (2, 1):
        layer.round_to(levels)
        wide.round_to(levels)
        for rows in (x[:1], x[:2], x[:9], x):
            assert torch.equal(layer(rows), wide(rows)), (levels, len(rows))
    ids = torch.tensor([0, 5, ROWS - 1])
    assert torch.equal(native.rows(ids, layer), native.rows(ids, wide))
    # 256 rows: the product splits over the threads, each widening its own groups' codes
    groups.codes, groups.scale, groups.offset = (
        np.tile(t, (4, 1)) for t in (groups.codes, groups.scale, groups.offset)
    )
    big = _native_layer(groups, None)
    layer.round_to(2)
    assert torch.equal(big(x)[:, :ROWS], layer(x)) and torch.equal(big(x)[:, ROWS:], layer(x).repeat(1, 3))


def test_float16_scales_are_read_exactly_subnormal_zero_and_largest_included():
    scale = torch.tensor([2.0**-24, 3 * 2.0**-20, 0.0, -(2.0**-14), 1.5, 65504.0, -0.0, 2.0**-10] * 4)
    scale = scale.reshape(16, 2)  # 16 rows, 2 scale groups of 32
    codes = torch.randint(-127, 128, (16, 64), dtype=torch.int8, generator=torch.Generator().manual_seed(1))
    layer = native.NativeLinear.of(codes, scale, None, 8, 32)
    assert layer.scale.dtype == torch.int16  # held as float16
    exact = codes.float().unflatten(-1, (2, 32)) * scale.unsqueeze(-1)
    assert torch.equal(native.rows(torch.arange(16), layer), exact.flatten(-2))
    x = torch.zeros(1, 64)
    x[0, 3], x[0, 40] = 1.0, 1.0  # each output: one code of each group times its scale
    assert torch.equal(layer(x)[0], exact[:, 0, 3] + exact[:, 1, 8])


def test_a_state_dict_with_scales_of_another_kind_is_refused_not_garbled():
    layer = _native_layer(gguf_groups.read(random_tensor("Q8_0", seed=2)), None)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.load_state_dict(state)  # its own kind: fine
    state["scale"] = layout.unpack(layer)[1]  # the same values, as float32
    with pytest.raises(ValueError, match="scale: torch.float32 given for a layer holding torch.int16"):
        layer.load_state_dict(state)


def test_float16_and_float32_scales_fuse_as_float32_with_the_same_bits():
    """A Q5_1 gate (float16 scales) beside a Q5_K up (float32 ones): one product, as before."""
    gate = _native_layer(gguf_groups.read(random_tensor("Q5_1", seed=3)), None)
    up = _native_layer(gguf_groups.read(random_tensor("Q5_K", seed=4)), None)
    assert gate.scale.dtype == torch.int16 and up.scale.dtype == torch.float32
    torch.manual_seed(5)
    x = torch.randn(3, COLS)
    alone = (gate(x), up(x))
    parent = torch.nn.Module()
    parent.gate_proj, parent.up_proj = gate, up
    assert lean.fuse(parent) == 1
    assert gate.scale.dtype == torch.float32 and gate.kernel_bits == up.kernel_bits
    assert torch.equal(parent.gate_proj(x), alone[0]) and torch.equal(parent.up_proj(x), alone[1])


def native_copy(model, q4=("o_proj", "down_proj"), attention: bool = True):
    """Every Linear of a tiny model as NativeLinear from random codes: Q4_K for the layers named in
    `q4`, Q8_0 for the others; and simlab's attention (as a model on the kernel loads) unless not
    `attention`."""
    linears = [
        (holder, name, child)
        for holder in list(model.modules())
        for name, child in list(holder.named_children())
        if isinstance(child, torch.nn.Linear)
    ]
    for seed, (parent, name, child) in enumerate(linears):
        rows, cols = child.weight.shape
        groups = gguf_groups.read(random_tensor("Q4_K" if name in q4 else "Q8_0", seed=seed))
        groups.codes = np.resize(groups.codes, (rows, cols))
        groups.scale = np.resize(groups.scale, (rows, cols // 32)) * 20
        groups.offset = np.resize(groups.offset, (rows, cols // 32)) * 20
        setattr(parent, name, _native_layer(groups, child.bias))
    if attention:
        lean.own_attention(model)
    return model


def logits_and_step(model, ids):
    """A prefill's logits, and a step's after a cache of the first 6 tokens."""
    with torch.inference_mode():
        whole = model(input_ids=ids).logits
        cache = model(input_ids=ids[:, :6], use_cache=True).cache
        assert cache is not None and cache.get_seq_length() == 6
        return whole, model(input_ids=ids[:, 6:7], cache=cache).logits


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_fused_layers_give_the_same_logits_bit_for_bit_and_fused_norms_the_same_to_rounding(
    kind, tiny_dir, tmp_path
):
    from transformers import AutoModelForCausalLM

    folder = tiny_llama_style(tmp_path / kind, kind, tiny_dir)
    plain = native_copy(AutoModelForCausalLM.from_pretrained(folder).eval())
    torch.manual_seed(0)
    fast = native_copy(AutoModelForCausalLM.from_pretrained(folder).eval())
    assert lean.fuse(fast) == 2 * 3  # q/k/v and gate/up in each of 3 blocks
    mixed = native_copy(AutoModelForCausalLM.from_pretrained(folder), q4=("o_proj", "down_proj", "v_proj"))
    assert lean.fuse(mixed) == 3  # q/k/v of two layouts stay apart
    ids = torch.tensor([[1, 5, 9, 30, 2, 7, 11, 4, 8, 10]])
    expected = logits_and_step(plain, ids)
    assert all(torch.equal(a, b) for a, b in zip(expected, logits_and_step(fast, ids)))
    assert lean.fuse_norms(fast) == (6 * 3 + 1 if kind == "gemma3" else 2 * 3 + 1)
    assert not any(isinstance(m, type(plain.model.norm)) for m in fast.modules())
    # simlab's norm (the squares summed in double) against torch's, on the float model: with the
    # kernel's layers an ulp can move an activation's code, which a random tiny model amplifies
    floats = AutoModelForCausalLM.from_pretrained(folder).eval()
    expected = logits_and_step(floats, ids)
    assert lean.fuse_norms(floats) == (6 * 3 + 1 if kind == "gemma3" else 2 * 3 + 1)
    normed = logits_and_step(floats, ids)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(expected, normed))
    assert not all(torch.equal(a, b) for a, b in zip(expected, normed))  # it is the new norm that ran
    norm = plain.model.norm
    with torch.inference_mode(), patch.dict(native._state, {"lib": None}):  # torch's rms_norm instead
        x = torch.randn(2, 4, norm.weight.shape[0])
        assert torch.equal(lean.FusedRMSNorm(norm, kind == "gemma3")(x), norm(x))


def test_the_rms_norm_is_torchs_to_rounding():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 640, generator=g) * 4
    scale = torch.randn(640, generator=g)
    ours = native.rms_norm(x, scale, 1e-6)
    exact = x.double() / torch.sqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-6) * scale.double()
    theirs = torch.nn.functional.rms_norm(x, (640,), scale, 1e-6)
    assert ours.shape == x.shape and ours.dtype == torch.float32
    assert (ours.double() - exact).abs().max() <= 4 * (theirs.double() - exact).abs().max()
    strided = x.transpose(0, 1)  # a view (q/k norms read one): rows by their values, not their memory
    assert torch.equal(native.rms_norm(strided, scale, 1e-6), ours.transpose(0, 1))
    odd = x[..., :37].contiguous()  # not a multiple of the eight running sums
    assert torch.allclose(
        native.rms_norm(odd, scale[:37], 1e-6), torch.nn.functional.rms_norm(odd, (37,), scale[:37], 1e-6)
    )


def test_without_a_compiler_there_is_no_library_and_it_says_why(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    assert native.library(tmp_path / "kernels") is None
    assert "no C compiler" in native.why()
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("SIMLAB_NATIVE", "0")
    assert native.library(tmp_path / "kernels") is None and native.why() == "SIMLAB_NATIVE=0"


def test_a_compiler_that_fails_is_one_line(monkeypatch, tmp_path):
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'cc: error: unrecognized option' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("CC", str(fake))
    assert native.library(tmp_path / "kernels") is None
    assert native.why() == "cc failed: cc: error: unrecognized option"


@pytest.mark.parametrize("bias", [False, True])
def test_fused_members_always_answer_for_their_own_input(bias):
    block = torch.nn.Module()
    for seed, name in enumerate(("q_proj", "k_proj", "v_proj")):
        groups = gguf_groups.read(random_tensor("Q8_0", seed=20 + seed))
        b = torch.randn(ROWS, generator=torch.Generator().manual_seed(seed)) if bias else None
        block.add_module(name, _native_layer(groups, b))  # (Qwen2's q/k/v have biases)
    alone = {name: getattr(block, name) for name in ("q_proj", "k_proj", "v_proj")}
    assert lean.fuse(block) == 1
    a, b = torch.randn(2, COLS), torch.randn(2, COLS)
    # interleaved, as two forwards in two threads could be: each call is its input's own product
    assert torch.equal(block.q_proj(a), alone["q_proj"](a))
    assert torch.equal(block.q_proj(b), alone["q_proj"](b))
    assert torch.equal(block.k_proj(a), alone["k_proj"](a))
    assert torch.equal(block.v_proj(b), alone["v_proj"](b))
    assert torch.equal(block.v_proj(a), alone["v_proj"](a))
    assert block.q_proj._fused.last is None  # the last member read its part: nothing held


@pytest.mark.parametrize("k", [1, 5, 256, 1024])
def test_top_k_is_the_k_largest_with_ties_to_the_lower_index(k):
    """One defined set: the first k of a stable descending sort, whatever the row looks like."""
    g = torch.Generator().manual_seed(k)
    rows = torch.cat(
        [
            torch.randn(2, 262144, generator=g) * 3,  # like logits
            torch.randint(0, 7, (2, 5000), generator=g)
            .float()
            .repeat(1, 53)[:, :262144],  # few values, many ties
            torch.full((1, 262144), -math.inf),
        ]
    )
    rows[2, 40000:40100] = math.inf
    rows[0, 3] = math.nan  # never joins
    values, ids = ranking.top_k(rows, k)
    order = torch.sort(rows.masked_fill(rows.isnan(), -math.inf), dim=-1, descending=True, stable=True)
    assert torch.equal(ids, order.indices[:, :k]) and torch.equal(values, order.values[:, :k])
    short = torch.tensor([[2.0, 1.0, 2.0, 0.5]])
    assert ranking.top_k(short, 4)[1].tolist() == [[0, 2, 1, 3]]


def test_top_k_without_the_library_is_torchs():
    x = torch.randn(3, 1000)
    with patch.dict(native._state, {"lib": None}):
        values, ids = ranking.top_k(x, 7)
    assert torch.equal(values, torch.topk(x, 7).values) and torch.equal(ids, torch.topk(x, 7).indices)


def test_levels_count_each_rows_values_below_its_best_in_float_arithmetic():
    """The C pass and torch's (no library) give the counts a float32 (top - v) / step floors to:
    ties at the top in level 0, -inf, NaN and values past the last level nowhere."""
    g = torch.Generator().manual_seed(2)
    rows = torch.randn(3, 40000, generator=g) * 2
    rows[0, :100] = -math.inf
    rows[0, 100:110] = math.nan
    rows[1, 7] = rows[1].max()  # a tie with the best
    step, count = math.log(1.1), 96
    rows[2, :50] = rows[2].max() - torch.arange(50) * torch.tensor(step, dtype=torch.float32)  # on edges
    top = torch.stack([r[r.isfinite()].max() for r in rows])
    counts = ranking.levels(rows, top, step, count)
    step32 = torch.tensor(step, dtype=torch.float32)
    d = ((top[:, None] - rows) * (1.0 / step32)).floor()
    for r in range(3):
        inside = d[r][(d[r] >= 0) & (d[r] < count) & (rows[r] > top[r] - count * step32)].long()
        assert torch.equal(counts[r], torch.bincount(inside, minlength=count)), r
    assert int(counts[1, 0]) >= 2 and int(counts[0].sum()) < 40000 - 110
    with patch.dict(native._state, {"lib": None}):
        assert torch.equal(ranking.levels(rows, top, step, count), counts)


def reference_attention(q, k, v, mask, scale, softcap=0.0, causal_offset=-1):
    """softmax(scale q K^T) V in float64, keys shared by their heads' groups, (B, T, H, Dv)."""
    group = q.shape[1] // k.shape[1]
    k, v = (t.double().repeat_interleave(group, dim=1) for t in (k, v))
    s = q.double() @ k.transpose(-1, -2) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    t, length = q.shape[2], k.shape[2]
    seen = torch.ones(t, length, dtype=torch.bool)
    if causal_offset >= 0:
        seen = torch.arange(length)[None, :] <= torch.arange(t)[:, None] + causal_offset
    if mask is not None and mask.dtype == torch.bool:
        seen = seen & mask
    s = s.masked_fill(~seen, float("-inf"))
    if mask is not None and mask.dtype != torch.bool:
        s = s + mask.double()
    return (s.softmax(-1) @ v).transpose(1, 2)


@pytest.mark.parametrize(
    "b, h, kh, t, length, d, how",
    [
        (1, 4, 1, 1, 11, 256, "none"),  # Gemma 3 270M's decode step
        (3, 4, 1, 1, 700, 256, "bool"),
        (2, 14, 2, 5, 300, 64, "causal"),  # Qwen2.5-0.5B's heads
        (1, 8, 8, 64, 64, 128, "causal"),  # a prefill chunk of a Llama
        (2, 4, 1, 70, 1000, 80, "float"),  # a head width that is not a multiple of 16
    ],
)
def test_attention_is_softmax_of_the_scores_to_rounding(b, h, kh, t, length, d, how):
    gen = torch.Generator().manual_seed(b * 100 + t)
    q, k, v = (torch.randn(b, n, m, d, generator=gen) for n, m in ((h, t), (kh, length), (kh, length)))
    mask, offset = None, -1
    if how == "bool":
        mask = torch.rand(b, 1, t, length, generator=gen) > 0.5
    elif how == "float":
        mask = torch.randn(1, 1, t, length, generator=gen)
    elif how == "causal":
        offset = length - t
    got = native_attention.attend(q, k, v, mask, d**-0.5, 0.0, offset)
    assert got.shape == (b, t, h, d)
    assert torch.allclose(got.double(), reference_attention(q, k, v, mask, d**-0.5, 0.0, offset), atol=2e-6)
    capped = native_attention.attend(q, k, v, mask, 0.5, 2.0, offset)  # Gemma 2's softcapping
    assert torch.allclose(capped.double(), reference_attention(q, k, v, mask, 0.5, 2.0, offset), atol=2e-6)


def test_attention_gives_each_row_its_bits_alone_whatever_the_batch_threads_or_address():
    """torch's CPU attention does not (measured on an AMD EPYC: row 0 of a batch of 3 differed from
    that row alone, and one row alone differed with its tensors 4 bytes further on)."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(4, 4, 1, 256, generator=gen), torch.randn(4, 1, 600, 256, generator=gen), None
    v = torch.randn(4, 1, 600, 256, generator=gen)
    alone = [
        native_attention.attend(q[i : i + 1], k[i : i + 1], v[i : i + 1], None, 0.0625) for i in range(4)
    ]

    def shifted(x, by):  # the same values `by` floats further on in memory
        room = torch.empty(x.numel() + by)
        return room[by:].view(x.shape).copy_(x)

    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            together = native_attention.attend(q, k, v, None, 0.0625)
            assert all(torch.equal(together[i : i + 1], alone[i]) for i in range(4)), count
    finally:
        torch.set_num_threads(threads)
    for by in (1, 3):
        moved = native_attention.attend(
            shifted(q[:1], by), shifted(k[:1], by), shifted(v[:1], by), None, 0.0625
        )
        assert torch.equal(moved, alone[0]), by


def test_a_model_on_the_kernel_attends_with_simlabs_attention_and_batches_rows_alone(tiny_dir, tmp_path):
    folder = tiny_llama_style(tmp_path / "llama", "llama", tiny_dir)
    from transformers import AutoModelForCausalLM

    model = native_copy(AutoModelForCausalLM.from_pretrained(folder).eval(), attention=False)
    lean.own_attention(model)
    assert not lean.rows_alone(model)  # torch's RMS norm still: a reduction in torch's order
    lean.fuse_norms(model)
    model.config._attn_implementation = "sdpa"
    assert not lean.rows_alone(model)  # torch's attention
    lean.own_attention(model)
    assert model.config._attn_implementation == "simlab" and lean.rows_alone(model)
    ids = torch.randint(3, 300, (3, 9))
    with torch.inference_mode():
        together = model(input_ids=ids).logits
        alone = torch.cat([model(input_ids=ids[i : i + 1]).logits for i in range(3)])
    assert torch.equal(together, alone)
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    lean.own_attention(plain)  # torch's float products: still not rows alone
    assert not lean.rows_alone(plain)


def test_a_long_pass_attends_a_few_positions_at_a_time_with_the_same_bits():
    gen = torch.Generator().manual_seed(4)
    q, k, v = torch.randn(1, 4, 75, 64, generator=gen), torch.randn(1, 2, 90, 64, generator=gen), None
    v = torch.randn(1, 2, 90, 64, generator=gen)
    mask = torch.rand(1, 1, 75, 90, generator=gen) > 0.2
    assert native_attention.QUERIES < 75  # three calls
    for m, offset in ((mask, -1), (None, 15)):
        whole = native_attention._attend(q, k, v, None if m is None else m.to(torch.bool), 0.125, 0.0, offset)
        assert torch.equal(native_attention.attend(q, k, v, m, 0.125, 0.0, offset), whole)
    with pytest.raises(ValueError, match="multiple of key heads"):
        native_attention.attend(torch.randn(1, 3, 1, 64), k, v, None, 0.125)


def test_an_activation_goes_row_by_row_and_a_model_with_torchs_goes_one_by_one(tiny_dir, tmp_path):
    """torch splits GELU-tanh on 32,768 values or more across threads where its vectors do not
    line up; each row alone is split as it is alone."""
    act = lean.RowActivation(torch.nn.GELU(approximate="tanh"))
    x = torch.randn(7, 10240)
    assert torch.equal(act(x), torch.cat([act.act(x[i : i + 1]) for i in range(7)]))
    threads = torch.get_num_threads()
    acts = (lean.RowActivation(torch.nn.SiLU()), lean.RowActivation(torch.nn.GELU(approximate="tanh")))
    try:  # one call only where it is serial on any number of threads (GELU splits from 16,384 values)
        for count in (2, 3, 6, 16):
            torch.set_num_threads(count)
            for f, b in [(f, b) for f in (640, 2048, 5632, 6912, 8960) for b in (2, 3, 5, 14)]:
                gate = (torch.randn(b, 1, 2 * f) * 3).split([f, f], dim=-1)[0]  # as the MLP's product lies
                for act, x in [(act, x) for act in acts for x in (gate, gate.contiguous())]:
                    assert torch.equal(act(x), torch.cat([act.act(x[i : i + 1]) for i in range(b)])), (
                        count,
                        f,
                        b,
                    )
    finally:
        torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM

    folder = tiny_llama_style(tmp_path / "llama", "llama", tiny_dir)
    model = native_copy(AutoModelForCausalLM.from_pretrained(folder).eval())
    lean.fuse_norms(model)
    assert lean.rows_alone(model)
    model.model.layers[0].mlp.act_fn = model.model.layers[0].mlp.act_fn.act  # unwrapped again
    assert not lean.rows_alone(model)


@pytest.mark.parametrize("b, h, kh, t, length, dv", [(1, 4, 1, 1, 11, 256), (3, 14, 2, 70, 1000, 64)])
def test_the_attention_working_memory_is_what_the_kernel_counts(b, h, kh, t, length, dv):
    """`_attend` counts the kernel's working memory itself (a call fewer per layer): the kernel's own
    count is the same."""
    lib = native.library()
    qb = min(t, 8)
    ours = b * kh * -(-t // 8) * -(-length // 128) * (h // kh) * qb * (2 + dv)
    assert ours == lib.simlab_attention_work(b, h, kh, t, length, dv)


def test_a_mask_that_is_only_causal_goes_to_the_kernel_as_its_offset_with_the_same_bits():
    """A pass after a cache gets a boolean mask from transformers; where it is exactly causal the
    attention passes the offset instead (the keys no query sees skipped, those all see taken without
    a test each): the same bits as the mask gives. Any other mask (a sliding window, padding) stays."""
    from simlab.models import masks

    g = torch.Generator().manual_seed(4)
    for t, length, kh in ((32, 200, 3), (64, 64, 1), (32, 1000, 2), (5, 300, 2)):
        q, k, v = torch.randn(1, 6, t, 64, generator=g), *torch.randn(2, 1, kh, length, 64, generator=g)
        causal = torch.ones(t, length, dtype=torch.bool).tril(length - t)[None, None]
        window = causal & ~torch.ones(t, length, dtype=torch.bool).tril(length - t - 100)[None, None]
        padded = causal.clone()
        padded[..., 0] = False
        assert masks.causal_offset(causal, t, length) == length - t
        for mask in (causal, window, padded):
            module = torch.nn.Module()
            module.is_causal = True
            ours = native_attention.attention(module, q, k, v, mask, 0.125)[0]
            with patch.object(masks, "causal_offset", lambda *a: None):  # the mask as the kernel reads it
                theirs = native_attention.attention(module, q, k, v, mask, 0.125)[0]
            assert torch.equal(ours, theirs), (t, length)
        if length - t > 100:
            assert masks.causal_offset(window, t, length) is None
        assert masks.causal_offset(padded, t, length) is None
    more = torch.ones(8, 5, dtype=torch.bool).tril(-3)[None, None]  # more queries than keys: some see none
    assert masks.causal_offset(more, 8, 5) is None
