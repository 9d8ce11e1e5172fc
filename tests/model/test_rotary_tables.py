"""The rotary tables of a model on simlab's kernel are made at most 2,048 values a call, on the
calling thread: over that, torch splits cos among its threads (MKL's vector math), and on the other
one about one test process in twenty got values off by up to 1.5e-4 (a 256-token call then gave
other bits than four 64-token calls). The tables made in pieces are one call's bits."""

import sys
from pathlib import Path

import pytest
import torch

from simlab.config import load_settings
from simlab.engine.local import Engine
from simlab.engine.params import SamplingParams
from simlab.models import lean, native
from simlab.models.load import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from gguf_shapes import Shape, make  # noqa: E402

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"no GGUF kernel here ({native.why()})")
LLAMA = {"llama": Shape("llama", 64, 2, 4, 2, 128, 400, False)}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    path = make("llama", "Q8_0", tmp_path_factory.mktemp("gguf"), shapes=LLAMA)
    return load_model(str(path), load_settings(weights="gguf"))


def test_a_long_prompts_tables_are_made_in_calls_torch_keeps_on_its_thread(loaded, monkeypatch):
    sizes = []
    for name in ("cos", "sin"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, real=real: sizes.append(t.numel()) or real(t))
    engine = Engine(loaded, reuse_prefix=False)
    engine.eos_ids = frozenset()
    engine.generate(list(range(3, 3 + 300)), SamplingParams(temperature=1.0, max_new_tokens=2, seed=1), n=3)
    assert sizes and max(sizes) <= lean.TABLE
    assert sum(sizes) >= 2 * 300 * 16  # the prompt's whole table (cos and sin, 16 values a position)


@pytest.mark.parametrize("rows, positions", [(1, 256), (3, 100), (16, 1), (40, 3), (1, 1)])
def test_the_tables_made_in_pieces_are_one_calls_bits(loaded, rows, positions):
    rotary = loaded.model.model.rotary_emb
    assert hasattr(rotary.forward, "whole")  # (on the kernel, the forward is tables_here's)
    ids = torch.arange(positions).repeat(rows, 1) + 7 * torch.arange(rows)[:, None]
    x = torch.zeros(rows, positions, 64)
    pieces, whole = rotary.forward(x, ids), rotary.forward.whole(x, ids)
    assert all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(pieces, whole, strict=True))


def test_a_gemma3_table_of_256_values_a_position_is_made_in_pieces_too():
    from simlab.models.gemma3 import Gemma3RotaryEmbedding

    config = type("C", (), {"head_dim": 256, "layer_types": ["sliding_attention", "full_attention"]})()
    config.rope_parameters = {
        "sliding_attention": {"rope_theta": 10_000.0},
        "full_attention": {"rope_theta": 1e6},
    }
    rotary = Gemma3RotaryEmbedding(config)
    forward = rotary.forward
    rotary.forward = lean.tables_here(rotary)
    ids, x, calls = torch.arange(64)[None] + 500, torch.zeros(1, 64, 640), []
    real = torch.Tensor.cos
    try:
        torch.Tensor.cos = lambda t: calls.append(t.numel()) or real(t)
        pieces = rotary(x, ids, "full_attention")
    finally:
        torch.Tensor.cos = real
    assert max(calls) <= lean.TABLE and len(calls) == 64 * 256 // lean.TABLE
    assert all(torch.equal(a, b) for a, b in zip(pieces, forward(x, ids, "full_attention"), strict=True))


@pytest.mark.parametrize("rows, positions", [(300, 1), (40, 3), (33, 70), (2, 129)])
@pytest.mark.parametrize(
    "rope",
    [
        None,
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ],
)
def test_a_llama_table_of_128_values_a_position_splits_rows_and_positions(rows, positions, rope):
    """Many rows of one position each (siblings, ragged decode) go in groups of rows; each call at
    most TABLE values, and the tables are one call's bits (default and Llama 3's rope)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    params = {"rope_theta": 500_000.0, **(rope or {"rope_type": "default"})}
    config = LlamaConfig(hidden_size=256, num_attention_heads=2, head_dim=128, rope_parameters=params)
    rotary = LlamaRotaryEmbedding(config)
    here = lean.tables_here(rotary)
    ids = torch.arange(positions).repeat(rows, 1) + 11 * torch.arange(rows)[:, None]
    x, calls, real = torch.zeros(rows, positions, 256), [], torch.Tensor.cos
    try:
        torch.Tensor.cos = lambda t: calls.append(t.numel()) or real(t)
        pieces = here(x, position_ids=ids)  # (as transformers calls it)
    finally:
        torch.Tensor.cos = real
    assert max(calls) <= lean.TABLE and len(calls) > 1
    whole = rotary.forward(x, ids)
    assert all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(pieces, whole, strict=True))
