"""Replies whose prompts differ, decoded as one batch (engine.ragged): each is the reply its run
gives alone. Rows are never padded: each keeps its own cache and attends over its own keys."""

import pytest
import torch
from conftest import tiny_llama_style
from test_lean_step import family_model, gemma2_model
from test_native import native_copy
from transformers import AutoModelForCausalLM

from simlab.engine import local, prefix, ragged
from simlab.engine.local import Engine
from simlab.engine.params import SamplingParams
from simlab.models import native
from simlab.models.softcap import cap_rows

STEPS = 14  # past the tiny Gemma's sliding window of 8, so its sliding layers mask


def _prefilled(model, ids: list[int]):
    cache = prefix.new_cache(model)
    prefix.feed(model, cache, ids, [], prefix.plan(0, len(ids)), None)
    return cache


@pytest.mark.parametrize("kind", ["gemma2", "gemma3", "llama", "qwen3"])
def test_each_row_of_a_ragged_step_is_its_step_alone_bit_for_bit(kind, tiny_dir, tmp_path):
    """With layers that sum each row alone (simlab's GGUF kernel), only attention could make a
    batch differ: the logits of every row equal its own decode, bit for bit."""
    if native.library() is None:
        pytest.skip(f"simlab's GGUF kernel is not built here ({native.why()}); test_native says why")
    if kind == "gemma2":  # softcapped attention and logits (the cap moved to the head, row by row)
        model = native_copy(gemma2_model())
        cap_rows(model)
    elif kind == "qwen3":  # with its q/k norms
        model = native_copy(family_model("qwen3"))
    else:
        folder = tiny_llama_style(tmp_path / kind, kind, tiny_dir)
        model = native_copy(AutoModelForCausalLM.from_pretrained(folder).eval())
    assert ragged.supported(model)
    torch.manual_seed(0)
    prompts = [torch.randint(3, 300, (n,)).tolist() for n in (5, 12, 2, 20)]
    tokens = torch.randint(3, 300, (STEPS, len(prompts)))
    with torch.inference_mode():
        alone = []
        for b, ids in enumerate(prompts):
            cache = _prefilled(model, ids)
            steps = [model(input_ids=t.view(1, 1), cache=cache, use_cache=True).logits for t in tokens[:, b]]
            alone.append(torch.cat(steps)[:, -1])  # (STEPS, V)
        caches = [_prefilled(model, ids) for ids in prompts]
        together = torch.stack([ragged.step(model, caches, tokens[s]) for s in range(STEPS)], dim=1)
    for b in range(len(prompts)):
        assert torch.equal(together[b], alone[b]), f"row {b}"


def test_decode_together_gives_each_run_the_reply_it_gives_alone(tiny):
    prompts = ["The cat", "Once upon a time there was a small dog and a", "A", "hello there, how are"]
    params = [
        SamplingParams(temperature=1.0, max_new_tokens=9, seed=1),
        SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=4, seed=2),  # ends first
        SamplingParams(temperature=1.0, max_new_tokens=12, seed=3, repetition_penalty=1.3),
        SamplingParams(temperature=1.0, max_new_tokens=12, seed=4, stop=("ow",)),  # a stop string
    ]
    engine = Engine(tiny, reuse_prefix=True)
    assert ragged.supported(engine.model)  # the tiny GPT-2 takes the batched path
    runs = [engine.start(p, q) for p, q in zip(prompts, params)]
    engine.decode_together(runs)
    for run, text, q in zip(runs, prompts, params):
        [got] = run.completions
        [alone] = Engine(tiny, reuse_prefix=False).generate(text, q)
        assert got.token_ids == alone.token_ids and got.text == alone.text
        assert got.finish_reason == alone.finish_reason and got.stop_string == alone.stop_string
        assert [t.logprob for t in got.tokens] == pytest.approx([t.logprob for t in alone.tokens], abs=1e-5)
        assert run.passes and sum(run.passes) == len(run.prompt_ids)  # replay feeds the prompt the same way
    assert runs[1].completions[0].finish_reason == "length" and len(runs[1].completions[0].tokens) == 4
    assert runs[3].completions[0].finish_reason == "stop"


def test_siblings_unknown_models_and_torchs_products_decode_one_run_after_another(tiny, monkeypatch):
    engine = Engine(tiny)
    q = SamplingParams(temperature=1.0, max_new_tokens=5, seed=8)
    calls = []
    monkeypatch.setattr(local, "_lockstep", lambda e, runs: calls.append(len(runs)))
    assert not engine.rows_alone  # torch's float products: a batch is not each row alone
    runs = [engine.start("Two words", q), engine.start("Three more words", q)]
    engine.decode_together(runs)
    assert calls == [] and all(len(r.completions[0].tokens) == 5 for r in runs)
    monkeypatch.setattr(engine, "rows_alone", True)  # as on simlab's kernel
    runs = [engine.start("One", q, n=2), engine.start("Two words", q), engine.start("Three more words", q)]
    engine.decode_together(runs)
    assert calls == [2]  # the two one-branch runs; the siblings' run went alone
    assert [len(c.tokens) for c in runs[0].completions] == [5, 5]
    monkeypatch.setattr(ragged, "FAMILIES", frozenset())
    runs = [engine.start("One", q), engine.start("Two words", q)]
    engine.decode_together(runs)
    assert calls == [2] and all(len(r.completions[0].tokens) == 5 for r in runs)
