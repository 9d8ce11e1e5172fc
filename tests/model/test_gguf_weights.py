"""--weights gguf: a GGUF tensor's own codes become torch int4 groups without being rounded again.

The blocks are random bytes in each format's layout (any bytes are a valid block once its float16
scales are finite), so the test does not depend on how a tool chose them; `gguf`'s dequantiser is
the reference."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

from simlab.models import gguf_groups, native
from simlab.models.quant import Int4Linear, Int8Linear, quantize

ROWS, COLS = 64, 256


def random_tensor(kind: str, seed: int = 0):
    qtype = GGMLQuantizationType[kind]
    block, size = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(ROWS * COLS // block, size), dtype=np.uint8)
    halves = 2 if kind in ("Q4_1", "Q4_K", "Q5_1", "Q5_K") else 1  # d (and m or dmin) lead each block
    for h in range(halves):
        value = rng.uniform(1e-3, 2e-2, size=len(blocks)).astype(np.float16)
        at = size - 2 if kind == "Q6_K" else 2 * h  # Q6_K's d ends its block
        blocks[:, at : at + 2] = value.view(np.uint8).reshape(-1, 2)
    data = blocks.reshape(ROWS, -1)
    return SimpleNamespace(name="blk.0.attn_q.weight", tensor_type=qtype, shape=[COLS, ROWS], data=data)


def reference(tensor) -> torch.Tensor:
    return torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).reshape(ROWS, COLS).copy())


def kernel_weight(layer: Int4Linear) -> torch.Tensor:
    """The weight the int4 kernel multiplies by, read back through the kernel itself with float32
    scales (its exact path): identity rows in, repeated as the layer repeats its input."""
    eye = torch.eye(COLS).repeat(1, layer._parts)
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, layer.packed, 32, layer.scale_zero.float())
    return out.t()  # (N, K)


@pytest.mark.parametrize("kind", ["Q4_0", "Q5_0", "Q8_0", "Q4_1", "Q4_K", "Q5_1", "Q5_K", "Q6_K"])
def test_codes_scales_and_offsets_give_back_the_dequantiser_exactly(kind):
    tensor = random_tensor(kind)
    groups = gguf_groups.read(tensor)
    assert groups is not None and groups.codes.shape == (ROWS, COLS)
    assert int(groups.codes.max()) < 2**groups.bits
    rebuilt = groups.scale[..., None] * groups.codes.reshape(ROWS, -1, groups.group).astype(np.float32)
    rebuilt = (rebuilt + groups.offset[..., None]).reshape(ROWS, COLS)
    assert np.array_equal(rebuilt, reference(tensor).numpy())


@pytest.mark.parametrize("kind", ["Q4_0", "Q5_0", "Q8_0"])
def test_symmetric_formats_are_the_file_with_bfloat16_scales_exactly(kind):
    tensor = random_tensor(kind, seed=1)
    groups = gguf_groups.read(tensor)
    layer = Int4Linear.of_groups(groups, None)
    assert layer._parts == (1 if groups.bits <= 4 else 2)
    signed = groups.codes.astype(np.float32) - groups.bias
    scale = torch.from_numpy(groups.scale).to(torch.bfloat16).float()
    expected = torch.from_numpy(signed).unflatten(-1, (-1, 32)) * scale.unsqueeze(-1)
    assert torch.equal(kernel_weight(layer), expected.flatten(-2))
    # and so within the rounding of a bfloat16 scale of what the file holds
    diff = (kernel_weight(layer) - reference(tensor)).abs()
    bound = (torch.from_numpy(signed).abs() * torch.from_numpy(groups.scale).repeat_interleave(32, 1)) * 2**-8
    assert bool((diff <= bound + 1e-12).all())


@pytest.mark.parametrize("kind", ["Q4_1", "Q4_K", "Q5_1", "Q5_K"])
def test_formats_with_a_minimum_are_within_the_rounding_of_bfloat16_scale_and_zero(kind):
    tensor = random_tensor(kind, seed=2)
    groups = gguf_groups.read(tensor)
    layer = Int4Linear.of_groups(groups, None)
    diff = (kernel_weight(layer) - reference(tensor)).abs().unflatten(-1, (-1, 32))
    scale, offset = torch.from_numpy(groups.scale), torch.from_numpy(groups.offset)
    # |q-8| <= 8 times the scale's error, and for 5 bits the high part's 16 h times it
    most = 8 if groups.bits == 4 else 24
    bound = (most * scale.abs() + (8 * scale + offset).abs()) * 2**-8
    assert bool((diff.amax(-1) <= bound + 1e-12).all())
    assert diff.max() > 0  # (the offsets are not multiples of the scale: the rounding is real)


def test_the_kernel_multiplies_by_those_weights():
    tensor = random_tensor("Q5_0", seed=3)
    layer = Int4Linear.of_groups(gguf_groups.read(tensor), None)
    x = torch.randn(3, COLS).to(torch.bfloat16)
    got = layer(x).float()
    expected = x.float() @ kernel_weight(layer).t()
    assert torch.allclose(got, expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())


def test_formats_not_read_as_groups_are_left_to_the_float_weights():
    q3k = random_tensor("Q4_0")
    q3k.tensor_type = GGMLQuantizationType.Q3_K
    assert gguf_groups.read(q3k) is None


@pytest.mark.parametrize("kernel", ["simlab", "torch"])
def test_a_layer_whose_codes_do_not_match_the_loaded_weight_becomes_int8(kernel, monkeypatch):
    if kernel == "torch":  # no compiler here: torch's int4 kernel takes the file's codes
        monkeypatch.setattr(native, "_state", {"lib": None, "why": "no C compiler"})
    tensor = random_tensor("Q8_0", seed=4)
    groups = gguf_groups.read(tensor)
    model = torch.nn.Sequential(
        torch.nn.Linear(COLS, ROWS, bias=False), torch.nn.Linear(COLS, ROWS, bias=False)
    )
    model.config = SimpleNamespace(tie_word_embeddings=False)
    with torch.no_grad():
        model[0].weight.copy_(reference(tensor))
        model[1].weight.copy_(reference(tensor).flip(0))  # rows permuted, as some loaders do
    stored = quantize(model, "gguf", groups_of=lambda key: groups)
    first = native.NativeLinear if kernel == "simlab" else Int4Linear
    assert isinstance(model[0], first) and isinstance(model[1], Int8Linear)
    kept = (
        {"0.codes", "0.scale", "0.layout"} if kernel == "simlab" else {"0.packed", "0.scale_zero", "0.parts"}
    )
    assert set(stored) == kept | {"1.weight_int8", "1.scale"}
    if kernel == "simlab":  # an identity row is rounded to 127 * (1/127): exact to a float32 step
        assert torch.allclose(model[0](torch.eye(COLS)).t(), reference(tensor), rtol=1e-6, atol=0)
    x = torch.randn(3, COLS)
    assert torch.equal(model[1](x)[2:], model[1](x[2:]))  # each row alone, as siblings need
