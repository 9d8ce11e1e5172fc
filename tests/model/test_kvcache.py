"""Cache layers that append in place (engine.kvcache): attention sees the values `torch.cat` would
give, so a model's logits are the plain DynamicCache's bit for bit, through the sliding window,
crops back to a shared prefix, batch selects and repeats, and deep copies."""

import copy

import pytest
import torch
from conftest import tiny_llama_style
from test_native import native_copy
from transformers import AutoModelForCausalLM, DynamicCache

from simlab.engine import kvcache, prefix, spill
from simlab.models import lean, native

STEPS = 30  # past the tiny Gemma's sliding window of 8, and past a buffer's first room of 64 with the prompt


def plain_cache(model):
    cache = DynamicCache(config=model.config)
    for layer in cache.layers:
        if hasattr(layer, "activate_past_recording"):
            layer.activate_past_recording()
    return cache


def steps(model, cache, tokens):
    return torch.cat(
        [model(input_ids=t.view(-1, 1), cache=cache, use_cache=True).logits for t in tokens], dim=1
    )


@pytest.fixture
def spill_soon(monkeypatch, tmp_path):
    """Sliding layers spill their past 2 tokens beyond the window, 3 or more at a time, into tmp_path."""
    monkeypatch.setattr(kvcache, "_KEEP", 2)
    monkeypatch.setattr(kvcache, "_SPILL", 3)
    monkeypatch.setattr(spill, "_FOLDER", [tmp_path / "spill"])
    return tmp_path / "spill"


@pytest.mark.parametrize("spilling", [False, True])
@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_a_cache_grown_in_place_gives_the_plain_caches_logits_bit_for_bit(
    kind, spilling, tiny_dir, tmp_path, request
):
    if spilling:
        request.getfixturevalue("spill_soon")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_style(tmp_path / kind, kind, tiny_dir)).eval()
    torch.manual_seed(0)
    ids = torch.randint(3, 300, (1, 50))
    tokens = torch.randint(3, 300, (STEPS, 1))
    with torch.inference_mode():
        caches = [plain_cache(model), prefix.new_cache(model)]
        assert all(kvcache.plain_dynamic(layer) for layer in caches[1].layers)
        assert type(caches[1].layers[0]).__name__.startswith("Growing")
        first = [model(input_ids=ids, cache=c, use_cache=True).logits for c in caches]
        assert torch.equal(first[0], first[1])
        a, b = (steps(model, c, tokens) for c in caches)
        assert torch.equal(a, b)
        for c in caches:  # back to a shared prefix, then on again
            c.crop(-7)
        a, b = (steps(model, c, tokens[:9]) for c in caches)
        assert torch.equal(a, b)
        copies = [copy.deepcopy(c) for c in caches]  # what a kept prefix holds
        for c in caches:
            c.batch_repeat_interleave(3)  # siblings
        three = tokens[:12].repeat(1, 3)
        a, b = (steps(model, c, three) for c in caches)
        assert torch.equal(a, b)
        for c in caches:
            c.batch_select_indices(torch.tensor([0, 2]))  # one finished
        a, b = (steps(model, c, three[:, :2]) for c in caches)
        assert torch.equal(a, b)
        a, b = (steps(model, c, tokens[:5]) for c in copies)
        assert torch.equal(a, b)
        layer = next(layer for layer in caches[1].layers if not layer.is_sliding)
        assert layer.keys.shape[-2] == layer.get_seq_length() == 50 + STEPS - 7 + 9 + 12 + 12


def test_a_sliding_layers_spilled_past_comes_back_when_a_prompt_is_cut_back_into_it(
    tiny_dir, tmp_path, spill_soon, monkeypatch
):
    """Past its window and _KEEP, a recording sliding layer's keys go to a file (memory holds the
    window and _KEEP only); cut back into them, twice, then deep-copied and cut back again, the cache
    gives the logits of one that kept everything in memory, bit for bit."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_style(tmp_path / "g", "gemma3", tiny_dir)).eval()
    torch.manual_seed(3)
    ids = torch.randint(3, 300, (1, 80))

    def run(check):
        out = []
        cache = prefix.new_cache(model)
        for at in range(0, 70, 10):
            model(input_ids=ids[:, at : at + 10], cache=cache, use_cache=True)
        sliding = [layer for layer in cache.layers if layer.is_sliding]
        check(sliding, 70)
        cache.crop(-4)  # a little: memory keeps its 9 with 4 read back
        check(sliding, 66)
        out.append(model(input_ids=ids[:, 66:70], cache=cache, use_cache=True).logits)
        cache.crop(-45)  # far into the spill
        check(sliding, 25)
        out.append(model(input_ids=ids[:, 25:31], cache=cache, use_cache=True).logits)
        twin = copy.deepcopy(cache)  # (a kept prefix): its own spill
        with monkeypatch.context() as refusing:  # and where the disk refuses one: in memory
            refusing.setattr(spill, "_open", lambda: open("/", "rb"))
            held = copy.deepcopy(cache)
        twin.crop(-20)
        check([layer for layer in twin.layers if layer.is_sliding], 11)
        out.append(model(input_ids=ids[:, 11:40], cache=twin, use_cache=True).logits)
        held.crop(-21)
        out.append(model(input_ids=ids[:, 10:40], cache=held, use_cache=True).logits)
        rows = copy.deepcopy(cache)  # rows repeated, then cut: the past came back before the repeat
        rows.batch_repeat_interleave(2)
        rows.crop(-12)
        out.append(model(input_ids=ids[:, 13:30].repeat(2, 1), cache=rows, use_cache=True).logits)
        cache.crop(-26)  # the first: untouched by its copies' cuts, cut back to its first 5 tokens
        check(sliding, 5)
        out.append(model(input_ids=ids[:, 5:20], cache=cache, use_cache=True).logits)
        for layer in sliding:  # (as after a full disk)
            layer._refused = True
        cache.reset()  # emptied and fed anew: nothing of its old past comes back, and it spills again
        model(input_ids=ids[:, 40:80], cache=cache, use_cache=True)
        check(sliding, 40)
        cache.crop(-5)
        out.append(model(input_ids=ids[:, 75:80], cache=cache, use_cache=True).logits)
        return out

    def spilled(layers, total):
        assert layers and spill_soon.is_dir()
        for layer in layers:  # memory: the window - 1 and _KEEP (9), and under _SPILL (3) more
            held = layer.keys.shape[-2]
            assert layer.get_seq_length() == total == layer._spill.count + held
            assert min(total, 9) <= held < 9 + 3
            assert layer._grown_keys.buffer.shape[-2] <= 64 + 12 + 10  # not a 40-token pass's 104

    with torch.inference_mode():
        spilling = run(spilled)
        monkeypatch.setattr(kvcache, "_SPILL", 10**9)
        kept = run(lambda layers, total: None)
    assert all(torch.equal(a, b) for a, b in zip(spilling, kept, strict=True))


def test_past_the_open_spill_files_allowed_a_layer_keeps_its_past_in_memory(
    tiny_dir, tmp_path, spill_soon, monkeypatch
):
    """A spill holds a file descriptor; past _MAX_OPEN of them a sliding layer keeps its past in
    memory, and the logits are the same."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_style(tmp_path / "g", "gemma3", tiny_dir)).eval()
    ids = torch.randint(3, 300, (1, 70), generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(spill, "_MAX_OPEN", len(spill._OPEN) + 1)
    with torch.inference_mode():
        cache = prefix.new_cache(model)
        out = [
            model(input_ids=ids[:, at : at + 10], cache=cache, use_cache=True).logits
            for at in range(0, 70, 10)
        ]
        sliding = [layer for layer in cache.layers if layer.is_sliding]
        assert len(sliding) == 2 and sum(hasattr(layer, "_spill") for layer in sliding) == 1
        assert sorted(layer.keys.shape[-2] for layer in sliding) == [9, 70]  # one spilled, one refused
        monkeypatch.setattr(kvcache, "_SPILL", 10**9)
        plain = prefix.new_cache(model)
        kept = [
            model(input_ids=ids[:, at : at + 10], cache=plain, use_cache=True).logits
            for at in range(0, 70, 10)
        ]
    assert all(torch.equal(a, b) for a, b in zip(out, kept, strict=True))


def test_growing_is_what_cat_gives_and_copies_only_when_the_room_runs_out():
    grown = kvcache.Growing()
    kept = None
    expected = torch.zeros(2, 1, 0, 4)
    buffers = []
    for n in [3, 70] + [1] * 300:
        new = torch.randn(2, 1, n, 4)
        expected = torch.cat([expected, new], dim=-2)
        kept = grown.cat(kept, new)
        assert torch.equal(kept, expected)
        if not buffers or grown.buffer is not buffers[-1]:
            buffers.append(grown.buffer)
        assert grown.buffer.shape[-2] <= kept.shape[-2] * 5 // 4 + 64  # never much more than it holds
    assert len(buffers) <= 6  # 302 appends: a copy each 64 tokens or a quarter more, not each step
    kept = grown.cat(kept[:, :, :10], torch.ones(2, 1, 1, 4))  # cut from outside: begins again from it
    assert torch.equal(kept, torch.cat([expected[:, :, :10], torch.ones(2, 1, 1, 4)], dim=-2))


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_siblings_repeat_a_cache_without_copying_it_first(kind, tiny_dir, tmp_path):
    """`repeated` gives what a deep copy and batch_repeat_interleave give, bit for bit, and leaves the
    cache it repeats as it was (a kept prefix): one copy of a long prompt's keys fewer."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_style(tmp_path / kind, kind, tiny_dir)).eval()
    torch.manual_seed(1)
    ids, tokens = torch.randint(3, 300, (1, 40)), torch.randint(3, 300, (STEPS, 3))
    with torch.inference_mode():
        cache = prefix.new_cache(model)
        model(input_ids=ids, cache=cache, use_cache=True)
        before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
        old_way = copy.deepcopy(cache)
        old_way.batch_repeat_interleave(3)
        twin = kvcache.repeated(cache, 3)
        assert all(layer.keys.shape[0] == 3 for layer in twin.layers)
        for layer in twin.layers:  # a sliding layer's siblings hold its window, not the prompt's past
            window = getattr(layer, "sliding_window", None)
            assert layer.keys.shape[-2] == (window - 1 if layer.is_sliding and window else 40)
        assert all(a.keys.data_ptr() != b.keys.data_ptr() for a, b in zip(cache.layers, twin.layers))
        assert torch.equal(steps(model, twin, tokens), steps(model, old_way, tokens))
        for layer, (keys, values) in zip(cache.layers, before):  # untouched by the siblings' steps
            assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)


def test_a_sliding_layer_cut_back_twice_keeps_the_keys_its_masks_count(tiny_dir, tmp_path):
    """transformers' crop of a sliding layer past its window keeps only window - 1 keys; a second cut
    further back then left fewer keys than the mask counts (a replay of a path's third reply
    failed). Cut back twice, the cache gives a fresh feed's logits."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_style(tmp_path / "g", "gemma3", tiny_dir)).eval()
    torch.manual_seed(2)
    ids = torch.randint(3, 300, (1, 60))
    with torch.inference_mode():
        cache = prefix.new_cache(model)
        model(input_ids=ids[:, :40], cache=cache, use_cache=True)
        model(input_ids=ids[:, 40:], cache=cache, use_cache=True)
        cache.crop(-5)  # a later prompt shares 55 tokens
        model(input_ids=ids[:, 55:57], cache=cache, use_cache=True)
        cache.crop(-17)  # and the next one only 40
        for layer in cache.layers:
            assert layer.keys.shape[-2] == layer.get_seq_length() == 40
        again = model(input_ids=ids[:, 40:50], cache=cache, use_cache=True).logits
        fresh = prefix.new_cache(model)
        model(input_ids=ids[:, :40], cache=fresh, use_cache=True)
        assert torch.equal(again, model(input_ids=ids[:, 40:50], cache=fresh, use_cache=True).logits)


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_siblings_share_the_prompts_full_layers_where_the_step_reads_them(kind, tiny_dir, tmp_path):
    """`repeated(..., share=True)` on a model whose decode step runs in models.blocks: each
    full-attention layer holds the prompt's keys once (the very tensors, no copy) and the rows' own
    keys after them; the lean step gives what copies give, bit for bit, through a branch finishing;
    so does the model's own forward on such a cache (its `update` puts the whole together)."""
    if native.library() is None:
        pytest.skip(f"simlab's GGUF kernel is not built here ({native.why()})")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_style(tmp_path / kind, kind, tiny_dir)).eval()
    model = native_copy(model)
    lean.fuse(model), lean.fuse_norms(model)
    assert lean.in_blocks(model)
    torch.manual_seed(2)
    ids, tokens = torch.randint(3, 300, (1, 40)), torch.randint(3, 300, (STEPS, 3))

    def lean_steps(cache, rows):
        return torch.cat([lean.decode_step(model, cache, t.view(-1, 1)) for t in rows], dim=1)

    with torch.inference_mode():
        cache = prefix.new_cache(model)
        model(input_ids=ids, cache=cache, use_cache=True)
        copied, shared, forward = (kvcache.repeated(cache, 3, share) for share in (False, True, True))
        full = [i for i, layer in enumerate(cache.layers) if not layer.is_sliding]
        assert full and all(shared.layers[i].shared[0] is cache.layers[i].keys for i in full)
        assert all(shared.layers[i].keys.shape == (3, cache.layers[i].keys.shape[1], 0, 8) for i in full)
        a, b, c = (
            lean_steps(copied, tokens[:10]),
            lean_steps(shared, tokens[:10]),
            steps(model, forward, tokens[:10]),
        )
        assert torch.equal(a, b) and torch.equal(a, c)
        for twin in (copied, shared, forward):
            twin.batch_select_indices(torch.tensor([0, 2]))
        rest = tokens[10:, :2]
        a, b, c = lean_steps(copied, rest), lean_steps(shared, rest), steps(model, forward, rest)
        assert torch.equal(a, b) and torch.equal(a, c)
        for i in full:  # the rows' own keys only, the prompt's counted once
            assert (
                shared.layers[i].keys.shape[-2] == STEPS and shared.layers[i].get_seq_length() == 40 + STEPS
            )
        for twin in (copied, shared):  # cut back past the rows' own keys: the prompt's part comes back
            twin.crop(-(STEPS + 1))
        assert torch.equal(lean_steps(copied, rest[:4]), lean_steps(shared, rest[:4]))
        assert all(not hasattr(shared.layers[i], "shared") for i in full)
        assert all(shared.layers[i].get_seq_length() == 40 - 1 + 4 for i in full)
