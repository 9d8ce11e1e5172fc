"""The KV cache kept between runs: a prompt that extends (or shares a prefix with) the last run's
tokens prefills only what is new, and gives the same tokens and log-probabilities as a fresh prefill."""

import pytest
from conftest import tiny_llama_style

from simlab.config import Settings
from simlab.engine.local import Engine
from simlab.engine.params import SamplingParams
from simlab.models.load import load_model


@pytest.fixture(scope="module", params=["gpt2", "gemma3"])
def loaded(request, tiny_dir, tmp_path_factory):
    folder = (
        tiny_dir
        if request.param == "gpt2"
        else tiny_llama_style(tmp_path_factory.mktemp("g3"), "gemma3", tiny_dir)
    )  # sliding window 8: the turns outgrow it
    return load_model(str(folder), Settings(device="cpu", dtype="float32"))


def chat_turns(engine, turns=4):
    """A chat as the REPL runs it: each prompt is the last prompt, the reply, and a new turn."""
    params = SamplingParams(temperature=1.0, max_new_tokens=5, seed=9)
    prompt, results = "User: hello there, tell me about the quick brown fox\nBot:", []
    for k in range(turns):
        run = engine.start(prompt, params.with_overrides(seed=9 + k))
        for _ in run:
            pass
        [c] = run.completions
        results.append(
            (c.token_ids, [t.logprob for t in c.tokens], run.stats.reused_tokens, len(run.prompt_ids))
        )
        prompt = prompt + c.text + f"\nUser: more {k}\nBot:"
    return results


def test_later_turns_prefill_only_the_new_tokens_and_match_a_fresh_prefill(loaded):
    reused = chat_turns(Engine(loaded))
    fresh = chat_turns(Engine(loaded, reuse_prefix=False))
    for (ids_a, lp_a, _reuse, _length), (ids_b, lp_b, no_reuse, _) in zip(reused, fresh):
        assert ids_a == ids_b and lp_a == pytest.approx(lp_b, abs=1e-4)
        assert no_reuse == 0
    assert reused[0][2] == 0 and all(r[2] >= 8 for r in reused[1:])  # turn 2 on: the earlier turns are reused
    assert all(r[3] - r[2] < 30 for r in reused[1:])  # the reply and the new turn: ~20 tokens


def test_a_sibling_after_a_batch_reuses_the_shared_prompt(loaded):
    engine = Engine(loaded)
    prompt = "User: tell me a story about a fox\nBot:"
    params = SamplingParams(temperature=1.0, max_new_tokens=4, seed=3)
    batch = engine.generate(prompt, params, n=3)
    run = engine.start(prompt, params.with_overrides(seed=3))  # /regen of branch 1
    for _ in run:
        pass
    assert run.stats.reused_tokens == len(run.prompt_ids) - 1
    assert run.completions[0].token_ids == batch[0].token_ids


def test_an_unrelated_prompt_starts_fresh(loaded):
    engine = Engine(loaded)
    engine.generate("User: hello there, how are you\nBot:", SamplingParams(max_new_tokens=3, seed=1))
    run = engine.start("Completely different text here", SamplingParams(max_new_tokens=3, seed=1))
    for _ in run:
        pass
    assert run.stats.reused_tokens == 0


def run_of(engine, prompt, params, passes=None):
    run = engine.start(prompt, params, passes=passes)
    for _ in run:
        pass
    return run


def test_a_replay_given_the_recorded_passes_gives_the_very_same_bits(loaded):
    """Turn after turn with the cache reused, each reply records its passes; a fresh engine fed the
    same passes gives the same tokens and log-probabilities to the last bit, not just close."""
    from simlab.engine.prefix import pack, unpack

    engine, fresh = Engine(loaded), Engine(loaded, reuse_prefix=False)
    params = SamplingParams(temperature=1.0, max_new_tokens=5)
    prompt = "User: hello there, tell me about the quick brown fox\nBot:"
    for k in range(4):
        run = run_of(engine, prompt, params.with_overrides(seed=40 + k))
        [c] = run.completions
        assert c.prefill == tuple(pack(run.passes)) and sum(run.passes) == len(run.prompt_ids)
        again = run_of(fresh, prompt, params.with_overrides(seed=40 + k), passes=unpack(list(c.prefill)))
        assert again.passes == run.passes and again.stats.reused_tokens == 0
        [d] = again.completions
        assert d.token_ids == c.token_ids and [t.logprob for t in d.tokens] == [t.logprob for t in c.tokens]
        prompt = prompt + c.text + f"\nUser: more {k}\nBot:"
    assert run.stats.reused_tokens > 0 and len(run.passes) > 3  # the last turn did reuse earlier passes


def test_whole_chunks_of_a_prompt_are_kept_on_disk_for_the_next_engine(loaded, tmp_path):
    from simlab.engine.prefix import CHUNK

    probe = Engine(loaded, reuse_prefix=False)
    frame = "A talk. "
    while len(probe.encode(frame)) < CHUNK + 4:  # one whole chunk and a little: fits a 128-token context
        frame += "A talk. "
    params = SamplingParams(temperature=1.0, max_new_tokens=4, seed=5)
    first = run_of(Engine(loaded, prefix_dir=tmp_path), frame + "User: hi\nBot:", params)
    assert first.stats.reused_tokens == 0 and first.passes[0] == CHUNK
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) == (len(first.prompt_ids) - 1) // CHUNK >= 1
    # another process, another chat with the same frame: the shared chunks come from the disk
    second = Engine(loaded, prefix_dir=tmp_path)
    other = run_of(second, frame + "User: yo\nBot:", params)
    shared = next(i for i, (a, b) in enumerate(zip(first.prompt_ids, other.prompt_ids)) if a != b)
    assert other.stats.reused_tokens == shared // CHUNK * CHUNK > 0
    alone = run_of(Engine(loaded, reuse_prefix=False), frame + "User: yo\nBot:", params)
    [a], [b] = other.completions, alone.completions
    assert a.token_ids == b.token_ids and [t.logprob for t in a.tokens] == [t.logprob for t in b.tokens]
    # a damaged file ends the chain there: the prompt is fed again, nothing fails
    for path in tmp_path.glob("*.safetensors"):
        path.write_bytes(b"not a tensor file")
    third = run_of(Engine(loaded, prefix_dir=tmp_path), frame + "User: hi\nBot:", params)
    assert third.stats.reused_tokens == 0 and third.completions[0].token_ids == first.completions[0].token_ids


def test_a_long_prompt_reports_its_passes_and_a_stop_while_it_goes_in_leaves_no_reply(loaded):
    """A long document's prefill says how far it is (the Loom editor shows it); Ctrl-C during it
    stops at the next pass, with no reply and nothing kept that a later run could misread."""
    engine = Engine(loaded)
    ids = list(range(3, 3 + 50)) * 2  # 100 tokens: a whole chunk, then the rest in two passes
    params = SamplingParams(temperature=1.0, max_new_tokens=4, seed=2)
    run = engine.start(ids, params)
    seen = []
    run.on_prefill = lambda at, total: seen.append((at, total))
    completions = list(run) and run.completions
    assert seen == [(0, 100), (64, 100), (99, 100), (100, 100)]
    assert len(completions[0].tokens) == 4
    other = ids[:80] + [7] * 20  # shares the whole first chunk, which the engine kept
    stopped = engine.start(other, params)
    stopped.on_prefill = lambda at, total: seen.append((at, total)) or stopped.interrupt()
    assert list(stopped) == [] and stopped.completions[0].tokens == []
    assert stopped.completions[0].finish_reason == "interrupted" and seen[-1] == (64, 100)
    again = engine.generate(other, params)
    [fresh] = Engine(loaded, reuse_prefix=False).generate(other, params)
    assert again[0].token_ids == fresh.token_ids
    assert [t.logprob for t in again[0].tokens] == [t.logprob for t in fresh.tokens]


def test_a_prompt_longer_than_the_disk_keeps_keeps_its_first_chunks(loaded, tmp_path, monkeypatch):
    """The disk keeps MAX_FILES chunks; a chain is read from its start, so a long document keeps its
    first chunks (it used to lose them to its own later ones, and the next read found nothing)."""
    from simlab.engine.prefix import CHUNK, DiskPrefixes

    if loaded.info.context_length < 3 * CHUNK:
        pytest.skip("needs a context of three chunks")
    monkeypatch.setattr(DiskPrefixes, "MAX_FILES", 2)
    params = SamplingParams(temperature=1.0, max_new_tokens=2, seed=5)
    other = run_of(Engine(loaded, prefix_dir=tmp_path), list(range(300, 300 + 70)), params)
    assert other.stats.reused_tokens == 0 and len(list(tmp_path.glob("*.safetensors"))) == 1
    long = list(range(3, 3 + 3 * CHUNK + 10))  # three whole chunks and more
    run_of(Engine(loaded, prefix_dir=tmp_path), long, params)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2  # its first two; the other prompt's went
    again = run_of(Engine(loaded, prefix_dir=tmp_path), long, params)
    assert again.stats.reused_tokens == 2 * CHUNK


def test_a_prompt_cut_back_into_its_spilled_past_replays_to_the_last_bit(loaded, tmp_path, monkeypatch):
    """A long prompt's sliding layers hold only their window and _KEEP in memory (the rest in their
    spill): a later prompt that shares only its start reads the past back, and its reply is a fresh
    engine's given the same passes, tokens and log-probabilities to the last bit; so is a chunk the
    disk keeps from such a prompt."""
    from simlab.engine import kvcache, spill
    from simlab.engine.prefix import pack, unpack

    monkeypatch.setattr(kvcache, "_KEEP", 60)  # (memory holds a whole chunk: the disk keeps it)
    monkeypatch.setattr(kvcache, "_SPILL", 3)
    monkeypatch.setattr(spill, "_FOLDER", [tmp_path / "spill"])
    engine, fresh = Engine(loaded, prefix_dir=tmp_path / "disk"), Engine(loaded, reuse_prefix=False)
    params = SamplingParams(temperature=1.0, max_new_tokens=5, seed=12)
    long = list(range(3, 3 + min(150, loaded.info.context_length - 8)))  # 2 whole chunks; 82 go out
    for prompt in (long, long[:70] + [5, 6, 7], long[:20] + [9] * 12, long):  # the 2nd: all 64 back
        run = run_of(engine, prompt, params)
        again = run_of(fresh, prompt, params, passes=unpack(list(pack(run.passes))))
        [c], [d] = run.completions, again.completions
        assert d.token_ids == c.token_ids and [t.logprob for t in d.tokens] == [t.logprob for t in c.tokens]
    if loaded.model.config.model_type.startswith("gemma3"):  # the kept prompt's sliding layers spilled
        sliding = [layer for layer in engine.prefix.cache.layers if getattr(layer, "is_sliding", False)]
        assert sliding and all(layer._spill.count > 0 and layer.keys.shape[-2] < 70 for layer in sliding)
    assert run.stats.reused_tokens == (len(long) - 1) // 64 * 64  # the first chunks: from the disk


def test_a_long_rest_after_an_unaligned_reuse_goes_in_chunks_and_the_disk_gives_more(
    loaded, tmp_path, monkeypatch
):
    """A Loom user's `g` on an early node, then on the long document's end: the last run's cache
    holds the early node's prompt (ending between chunks), the disk the document's chunks. The disk
    gives more, so it is read (the last run's cache was taken, and the rest went in as one pass:
    gigabytes, no progress, no Ctrl-C); without it, the rest goes in chunks, each told as it goes,
    and a fresh engine given the passes replies the same to the last bit."""
    from simlab.engine import prefix

    if loaded.info.context_length < 240:
        pytest.skip("needs a context of 240 tokens")
    monkeypatch.setattr(prefix, "LONG", prefix.CHUNK)
    params = SamplingParams(temperature=1.0, max_new_tokens=3, seed=4)
    document = list(range(3, 3 + 230))
    engine = Engine(loaded, prefix_dir=tmp_path)
    run_of(engine, document[:200], params)  # the document: its three whole chunks go to the disk
    early = run_of(engine, document[:100], params)  # the early node: after the first chunk, 35 + 1
    assert early.passes[:3] == [64, 35, 1]
    again = run_of(engine, document[:200], params)
    assert again.stats.reused_tokens == 192  # the disk's 192, not the last run's 100
    later = Engine(loaded, prefix_dir=tmp_path)  # another process: the disk's chunks, told as read
    seen = []
    stopped = later.start(document[:200], params)
    stopped.on_prefill = lambda at, total: seen.append(at) or stopped.interrupt()
    assert list(stopped) == [] and stopped.completions[0].finish_reason == "interrupted"
    assert seen and max(seen) == 64  # Ctrl-C while the disk's chunks are read: stopped after one
    told = []
    reading = later.start(document[:200], params)
    reading.on_prefill = lambda at, total: told.append(at)
    list(reading)
    assert told == [64, 128, 192, 192, 199, 200] and reading.stats.reused_tokens == 192
    alone = Engine(loaded)  # no disk: the last run's 100, then to 128, then chunks
    run_of(alone, document[:100], params)
    run = alone.start(document, params)
    seen = []
    run.on_prefill = lambda at, total: seen.append(at)
    list(run)
    assert run.stats.reused_tokens == 100 and run.passes[:7] == [64, 35, 1, 28, 64, 37, 1]
    assert seen == [100, 128, 192, 229, 230]
    fresh = run_of(Engine(loaded, reuse_prefix=False), document, params, passes=run.passes[:7])
    [c], [d] = run.completions, fresh.completions
    assert d.token_ids == c.token_ids and [t.logprob for t in d.tokens] == [t.logprob for t in c.tokens]
