"""models.gemma3: simlab's own Gemma 3 text model gives transformers' Gemma3ForCausalLM's logits,
hidden states and masks bit for bit, and is built without transformers' modeling stack."""

import copy
import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_llama_style
from test_native import native_copy
from transformers import AutoModelForCausalLM
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from simlab.engine import prefix, ragged
from simlab.models import gemma3, native


@pytest.fixture(scope="module")
def pair(tiny_dir, tmp_path_factory):
    """transformers' tiny Gemma 3 (softcapping, sliding window 8) and simlab's, with its weights."""
    folder = tiny_llama_style(tmp_path_factory.mktemp("g") / "g", "gemma3", tiny_dir)
    # (as simlab loads every model: a weight that requires grad takes another matmul path in torch,
    # whose last bits differ for a sliced input)
    theirs = AutoModelForCausalLM.from_pretrained(folder).eval().requires_grad_(False)
    assert gemma3.supports(folder)
    ours = gemma3.build(folder)
    ours.load_state_dict(theirs.state_dict(), strict=False, assign=True)
    ours.tie_weights()
    assert not [n for n, p in ours.named_parameters() if p.is_meta]
    return theirs, ours


@torch.inference_mode()
def test_prefill_logits_and_hidden_states_are_transformers_bit_for_bit(pair):
    theirs, ours = pair
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))  # past the window
    want = theirs(input_ids=ids, output_hidden_states=True)
    got = ours(input_ids=ids, output_hidden_states=True)
    assert torch.equal(got.logits, want.logits)
    assert len(got.hidden_states) == len(want.hidden_states) == 4
    assert all(torch.equal(a, b) for a, b in zip(got.hidden_states, want.hidden_states))
    assert ours(input_ids=ids, use_cache=False).past_key_values is None


@torch.inference_mode()
def test_decoding_past_the_sliding_window_and_a_chunk_after_it_are_bit_for_bit(pair):
    theirs, ours = pair
    gen = torch.Generator().manual_seed(1)
    mine, own = prefix.new_cache(ours), prefix.new_cache(theirs)
    prompt = torch.randint(3, 300, (2, 5), generator=gen)
    assert torch.equal(ours(input_ids=prompt, cache=mine).logits, theirs(input_ids=prompt, cache=own).logits)
    for step in torch.randint(3, 300, (20, 2), generator=gen):
        got = ours(input_ids=step[:, None], cache=mine, use_cache=True).logits
        assert torch.equal(got, theirs(input_ids=step[:, None], cache=own, use_cache=True).logits)
    chunk = torch.randint(3, 300, (2, 6), generator=gen)
    got = ours(input_ids=chunk, cache=mine, logits_to_keep=1).logits
    assert got.shape == (2, 1, theirs.config.vocab_size)
    assert torch.equal(got, theirs(input_ids=chunk, cache=own, logits_to_keep=1).logits)
    assert mine.get_seq_length() == own.get_seq_length() == 31


@pytest.mark.parametrize("past", [0, 3, 7, 8, 12])
@pytest.mark.parametrize("new", [1, 5])
def test_masks_are_transformers_masks(pair, past, new):
    theirs, ours = pair
    with torch.inference_mode():
        for cache in (prefix.new_cache(ours), None):
            if cache is not None and past:
                ours(input_ids=torch.full((1, past), 5), cache=cache)
            embeds = torch.zeros(1, new, 32)
            args = {"config": theirs.config, "inputs_embeds": embeds, "attention_mask": None, "cache": cache}
            want = {
                "full_attention": create_causal_mask(**args),
                "sliding_attention": create_sliding_window_causal_mask(**args),
            }
            got = gemma3.masks_for(ours.config, cache, new, 1, "cpu")
            for kind in want:
                assert (got[kind] is None) == (want[kind] is None), (kind, past, new)
                if want[kind] is not None:
                    assert torch.equal(got[kind], want[kind]), (kind, past, new)


@torch.inference_mode()
def test_ragged_rows_attend_alone_on_simlabs_model(pair):
    """On simlab's kernel (each row summed alone) a batch of rows with caches of different lengths
    gives each row's logits alone, bit for bit."""
    if native.library() is None:
        pytest.skip(f"simlab's GGUF kernel is not built here ({native.why()})")
    ours = native_copy(copy.deepcopy(pair[1]))
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 300, (1, n), generator=gen) for n in (3, 11)]
    caches = [prefix.new_cache(ours) for _ in prompts]
    alone = [prefix.new_cache(ours) for _ in prompts]
    for p, c, a in zip(prompts, caches, alone):
        ours(input_ids=p, cache=c)
        ours(input_ids=p, cache=a)
    tokens = torch.tensor([7, 9])
    together = ragged.step(ours, caches, tokens)
    assert gemma3.ATTENTION["simlab"] is ragged.attention  # simlab's own attention, row by row
    for b, a in enumerate(alone):
        assert torch.equal(together[b], ours(input_ids=tokens[b].view(1, 1), cache=a).logits[0, -1])


def test_only_configs_it_builds_exactly_are_supported(tmp_path, pair):
    theirs, _ = pair
    base = json.loads(theirs.config.to_json_string())
    base["architectures"] = ["Gemma3ForCausalLM"]
    cases = {
        "ok": {},
        "bidirectional": {"use_bidirectional_attention": True},
        "softcapped attention": {"attn_logit_softcapping": 50.0},
        "scaled rope": {"rope_parameters": {k: {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e4}
                                            for k in ("full_attention", "sliding_attention")}},
        "llama": {"model_type": "llama"},
    }  # fmt: skip
    for name, change in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**base, **change}))
        assert gemma3.supports(folder) == (name == "ok"), name
    assert not gemma3.supports(tmp_path / "missing")


def test_building_it_imports_no_modeling_stack(pair, tmp_path):
    """The point of the module: none of transformers' modeling imports (nor torch._dynamo)."""
    theirs, _ = pair
    theirs.save_pretrained(tmp_path)
    code = (
        "import sys, torch\nfrom simlab.models import gemma3\n"
        f"model = gemma3.build({str(tmp_path)!r})\n"
        "heavy = ('transformers.modeling_utils', 'transformers.masking_utils', 'transformers.models',"
        " 'torch._dynamo')\nprint([m for m in heavy if m in sys.modules], type(model).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "Gemma3ForCausalLM"]
