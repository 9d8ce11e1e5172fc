"""The residual stream of the real embedded model (Gemma 3), read through its own lens."""

import pytest
import torch

from simlab.engine.params import SamplingParams
from simlab.trace.config import TraceConfig
from simlab.trace.lens import Lens
from simlab.trace.record import Recorder


@pytest.mark.slow
def test_the_embedded_model_traced_and_read_through_its_own_lens(embedded, embedded_engine):
    lens = Lens(embedded.model)  # the norm and softcap check, on Gemma 3 itself
    assert (
        lens.arch.layers == 18
        and lens.arch.block_path == "model.layers"
        and lens.arch.norm_path == "model.norm"
    )
    assert (
        lens.arch.softcap == embedded.model.config.final_logit_softcapping
    )  # None on Gemma 3; read, not assumed
    recorder = Recorder(embedded.model, TraceConfig())  # bfloat16, all points
    prompt = "Interviewer: What is your favourite animal?\nGuest:"
    [c] = embedded_engine.generate(prompt, SamplingParams(max_new_tokens=6, seed=1), recorder=recorder)
    tensors, positions = recorder.result(0)
    assert set(tensors) == {"embed", "norm", *[f"block.{i}" for i in range(18)]}
    assert recorder.bytes_per_token() == 20 * 640 * 2
    ids = embedded_engine.encode(prompt) + c.token_ids
    with torch.inference_mode():
        out = embedded.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    # the traced passes (prompt, then a token at a time) against one pass over it all: the model's
    # int4 kernels take bfloat16 activations, so the two differ by bfloat16 noise, not more
    traced, whole = tensors["block.9"].float(), out.hidden_states[10][0, positions].float()
    assert ((traced - whole).norm(dim=-1) / whole.norm(dim=-1)).max() < 0.02
    lens_probs = lens.logits(tensors["norm"], normed=True).softmax(-1)
    model_probs = out.logits[0, positions].float().softmax(-1)
    assert (lens_probs - model_probs).abs().max() < 0.02  # bfloat16 storage, same distribution
    assert lens_probs.argmax(-1).tolist() == model_probs.argmax(-1).tolist()
