"""models.lean.decode_step: Gemma 3's forward as the same ops without the module machinery, bit
for bit the model's own, on simlab's GGUF layers (fused) and on plain float ones."""

import pytest
import torch
from conftest import tiny_llama_style
from test_native import native_copy
from transformers import AutoModelForCausalLM

from simlab.engine import prefix
from simlab.models import lean, native


@pytest.mark.parametrize("layers", ["float", "gguf"])
def test_the_lean_step_is_the_models_forward_bit_for_bit(layers, tiny_dir, tmp_path):
    if layers == "gguf" and native.library() is None:
        pytest.skip(f"simlab's GGUF kernel is not built here ({native.why()})")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_style(tmp_path / "g", "gemma3", tiny_dir)).eval()
    if layers == "gguf":
        model = native_copy(model)
        assert lean.fuse(model) and lean.fuse_norms(model)
    assert lean.steps_lean(model)
    torch.manual_seed(0)
    prompt = torch.randint(3, 300, (2, 5))  # two rows, as siblings decode
    tokens = torch.randint(3, 300, (20, 2))  # past the tiny Gemma's sliding window of 8
    with torch.inference_mode():
        own, mine = prefix.new_cache(model), prefix.new_cache(model)
        model(input_ids=prompt, cache=own, use_cache=True)
        model(input_ids=prompt, cache=mine, use_cache=True)
        for step in tokens:
            want = model(input_ids=step.unsqueeze(-1), cache=own, use_cache=True).logits
            got = lean.decode_step(model, mine, step.unsqueeze(-1))
            assert torch.equal(got, want)
    assert own.get_seq_length() == mine.get_seq_length() == 25


def test_other_families_keep_the_models_own_forward(tiny):
    assert not lean.steps_lean(tiny.model)  # the tiny GPT-2
