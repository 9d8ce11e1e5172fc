"""The decode loop on a tiny GPT-2 with random weights (real transformers code path)."""

import pytest
import torch

from simlab.engine.local import Engine
from simlab.engine.params import SamplingParams
from simlab.engine.textstream import TextTracker
from simlab.errors import ContextLengthError

PROMPT = "Interviewer: How long have you kept this light?\nKeeper:"


def collect(run):
    """Concatenate streamed text per branch while iterating a run."""
    texts = {}
    for delta in run:
        texts[delta.branch] = texts.get(delta.branch, "") + delta.text
    return texts


def test_streamed_text_equals_final_text(tiny_engine):
    run = tiny_engine.start(PROMPT, SamplingParams(temperature=1.0, max_new_tokens=40, seed=3), n=3)
    texts = collect(run)
    assert [texts.get(i, "") for i in range(3)] == [c.text for c in run.completions]
    assert all(c.text for c in run.completions)


def test_greedy_equals_transformers_generate(tiny, tiny_engine):
    ids = tiny_engine.encode(PROMPT)
    reference = tiny.model.generate(
        torch.tensor([ids]),
        do_sample=False,
        max_new_tokens=30,
        pad_token_id=0,
        eos_token_id=None,
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
    )[0, len(ids) :].tolist()
    tiny_engine_no_eos = Engine(tiny)
    tiny_engine_no_eos.eos_ids = frozenset()
    [ours] = tiny_engine_no_eos.generate(ids, SamplingParams(temperature=0, max_new_tokens=30))
    assert ours.token_ids == reference
    assert ours.finish_reason == "length"


def test_same_seed_same_tokens_other_seed_other_tokens(tiny_engine):
    params = SamplingParams(temperature=1.2, max_new_tokens=25, seed=11)
    [a] = tiny_engine.generate(PROMPT, params)
    [b] = tiny_engine.generate(PROMPT, params)
    [c] = tiny_engine.generate(PROMPT, params.with_overrides(seed=12))
    assert a.token_ids == b.token_ids and a.seed == 11
    assert a.token_ids != c.token_ids


def test_siblings_equal_their_seeds_sampled_alone(tiny_engine):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=20, seed=100)
    together = tiny_engine.generate(PROMPT, params, n=4)
    assert [c.seed for c in together] == [100, 101, 102, 103]
    for completion in together:
        [alone] = tiny_engine.generate(PROMPT, params.with_overrides(seed=completion.seed))
        assert alone.token_ids == completion.token_ids
    assert len({tuple(c.token_ids) for c in together}) > 1


def test_siblings_with_repetition_penalty_stay_independent(tiny_engine):
    params = SamplingParams(temperature=1.0, repetition_penalty=1.5, max_new_tokens=15, seed=7)
    together = tiny_engine.generate(PROMPT, params, n=3)
    [alone] = tiny_engine.generate(PROMPT, params.with_overrides(seed=9))
    assert together[2].token_ids == alone.token_ids


def test_branches_that_finish_early_leave_the_batch(tiny, tiny_engine):
    # Make the token branch 0 draws first an end-of-sequence token: branch 0 ends after one step
    # while the others run on, and must be unaffected by the batch shrinking under them.
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=40)
    first = tiny_engine.generate(PROMPT, params, n=3)
    engine = Engine(tiny)
    engine.eos_ids = frozenset({first[0].token_ids[0]})
    shrunk = engine.generate(PROMPT, params, n=3)
    assert shrunk[0].finish_reason == "eos" and len(shrunk[0].tokens) == 1
    for i in (1, 2):
        ended = [k for k, t in enumerate(first[i].token_ids) if t in engine.eos_ids]
        upto = ended[0] + 1 if ended else len(first[i].token_ids)
        assert shrunk[i].token_ids == first[i].token_ids[:upto]


def test_logprobs_match_a_teacher_forced_forward_pass(tiny, tiny_engine):
    ids = tiny_engine.encode(PROMPT)
    [c] = tiny_engine.generate(ids, SamplingParams(temperature=1.0, max_new_tokens=15, seed=5))
    full = torch.tensor([ids + c.token_ids])
    with torch.no_grad():
        logp = tiny.model(full).logits[0].log_softmax(-1)  # (T, V)
    for k, token in enumerate(c.tokens):
        row = logp[len(ids) - 1 + k]
        assert token.logprob == pytest.approx(float(row[token.id]), abs=1e-4)
        top_ids = row.topk(5).indices.tolist()
        assert [t[0] for t in token.top] == top_ids
        assert [t[2] for t in token.top] == sorted([t[2] for t in token.top], reverse=True)
        assert token.top[0][1] == tiny.tokenizer.decode([top_ids[0]])


def test_stop_string_across_token_boundaries_is_trimmed(tiny_engine):
    params = SamplingParams(temperature=0, max_new_tokens=40)
    engine_text = tiny_engine.generate(PROMPT, params)[0]
    pieces = [t.text for t in engine_text.tokens]
    # A stop string that starts inside token 3 and ends inside token 5.
    start = sum(len(p) for p in pieces[:3]) - 1
    end = sum(len(p) for p in pieces[:5]) - 1
    full = engine_text.text
    stop = full[start:end]
    assert len(stop) >= 2
    run = tiny_engine.start(PROMPT, params.with_overrides(stop=(stop,)))
    streamed = collect(run)[0]
    [c] = run.completions
    assert c.finish_reason == "stop" and c.stop_string == stop
    assert c.text == full[: full.find(stop)] == streamed
    assert stop not in streamed


def test_earliest_of_several_stop_strings_wins(tiny_engine):
    params = SamplingParams(temperature=0, max_new_tokens=40)
    full = tiny_engine.generate(PROMPT, params)[0].text
    late, early = full[20:24], full[6:9]
    [c] = tiny_engine.generate(PROMPT, params.with_overrides(stop=(late, early)))
    assert c.text == full[: full.find(early)] and c.stop_string == early


def test_text_tracker_never_splits_a_multibyte_character(tiny):
    tokenizer = tiny.tokenizer
    text = " ßж 𝄞 mixed ÿ"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) > len(text.split())  # characters really are split into byte tokens
    tracker = TextTracker(tokenizer, tokenizer("x")["input_ids"], stops=())
    deltas = [tracker.add(i) for i in ids] + [tracker.finish()]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_text_tracker_holds_back_a_possible_stop_prefix(tiny):
    tokenizer = tiny.tokenizer
    tracker = TextTracker(tokenizer, [], stops=("\nUser:",))
    out = []
    for token in tokenizer("Hi there\nUse it\nUser: x")["input_ids"]:
        out.append(tracker.add(token))
        assert not "".join(out).endswith("\nUse") or tracker.stop_string is None
    assert "".join(out) == "Hi there\nUse it"
    assert tracker.stop_string == "\nUser:"


def test_eos_finishes_a_branch(tiny, tiny_engine):
    params = SamplingParams(temperature=1.0, max_new_tokens=30, seed=21)
    [first] = tiny_engine.generate(PROMPT, params)
    ids = first.token_ids
    k = next(k for k in range(1, len(ids)) if ids[k] not in ids[:k])  # first new token id
    engine = Engine(tiny)
    engine.eos_ids = frozenset({ids[k]})
    [c] = engine.generate(PROMPT, params)
    assert c.finish_reason == "eos" and c.token_ids == ids[: k + 1]
    # The eos token adds no text; an unfinished multi-byte character before it is dropped.
    assert c.text == tiny.tokenizer.decode(ids[:k]).rstrip("\ufffd")


def test_interrupt_keeps_the_partial_reply(tiny_engine):
    run = tiny_engine.start(PROMPT, SamplingParams(temperature=1.0, max_new_tokens=50, seed=1), n=2)
    seen = 0
    for _ in run:
        seen += 1
        if seen == 6:
            run.interrupt()
    assert run.interrupted
    assert all(c.finish_reason == "interrupted" for c in run.completions)
    assert sum(len(c.tokens) for c in run.completions) == 6


def test_keyboard_interrupt_inside_decoding_keeps_the_partial_reply(tiny, monkeypatch):
    engine = Engine(tiny)
    calls = {"n": 0}
    forward = tiny.model.forward

    def flaky_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # two passes for the prompt (its last token alone), then one a token
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    monkeypatch.setattr(tiny.model, "forward", flaky_forward)
    run = engine.start(PROMPT, SamplingParams(temperature=1.0, max_new_tokens=50, seed=1))
    texts = collect(run)
    [c] = run.completions
    assert c.finish_reason == "interrupted" and len(c.tokens) == 3
    assert texts[0] == c.text


def test_prompt_longer_than_context_is_a_clear_error(tiny_engine):
    with pytest.raises(ContextLengthError, match="reads at most 128"):
        tiny_engine.start(list(range(5, 5 + 130)), SamplingParams())


def test_max_new_tokens_is_clipped_to_the_context(tiny_engine):
    prompt = list(range(5, 5 + 120))
    [c] = tiny_engine.generate(prompt, SamplingParams(temperature=1.0, max_new_tokens=50, seed=2))
    assert len(c.tokens) <= 8
    if c.finish_reason == "length":
        assert len(c.tokens) == 8 and c.truncated_to_context


def test_stats_are_filled(tiny_engine):
    run = tiny_engine.start(PROMPT, SamplingParams(temperature=1.0, max_new_tokens=10, seed=2), n=2)
    collect(run)
    assert run.stats.prompt_tokens == len(tiny_engine.encode(PROMPT))
    assert run.stats.generated_tokens == sum(len(c.tokens) for c in run.completions)
    assert run.stats.decode_seconds > 0 and run.stats.first_token_seconds > 0
