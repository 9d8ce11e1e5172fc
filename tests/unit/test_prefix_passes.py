"""How a prompt is cut into passes (engine.prefix): the plan, its record on a node, and which passes
of a kept cache a new prompt may reuse. No torch here."""

from hypothesis import given
from hypothesis import strategies as st

from simlab.engine.prefix import CHUNK, LONG, TOGETHER, calls, pack, plan, shared_passes, unpack, usable


def test_a_fresh_prompt_goes_in_as_whole_chunks_then_the_rest_then_its_last_token_alone():
    assert plan(0, 1) == [1]
    assert plan(0, 10) == [9, 1]
    assert plan(0, CHUNK + 1) == [CHUNK, 1]
    assert plan(0, 2 * CHUNK + 5) == [CHUNK, CHUNK, 4, 1]
    assert plan(CHUNK, 2 * CHUNK + 5) == [CHUNK, 4, 1]  # after a kept chunk, the chunks go on
    assert plan(70, 100) == [29, 1]  # after a reused turn: the new tokens, then the last alone
    # a long document after a short reused start: to the next chunk's end, then chunks
    assert plan(70, 70 + 600) == [58] + [CHUNK] * 8 + [29, 1]
    assert plan(70, 70 + LONG + 1) == [LONG, 1]  # (no longer than LONG: whole)


def test_passes_go_through_the_model_one_a_call_or_in_runs_where_the_cut_changes_nothing():
    passes = [CHUNK] * 5 + [9, 1]
    assert calls(passes) == [1] * 7  # (upto 0: each alone)
    assert TOGETHER == 4 * CHUNK and calls(passes, 0, 10**9) == [4, 2, 1]  # never the last token's pass
    assert calls([58] + [CHUNK] * 8 + [29, 1], 70, 10**9) == [4, 4, 2, 1]  # (58 + 3 chunks: 250 tokens)
    assert calls([LONG, 1], 0, 10**9) == [1, 1] and calls([1], 0, 10**9) == [1]
    # within a sliding window only: the calls end by `upto`
    assert calls(passes, 0, 200) == [3, 1, 1, 1, 1] and calls(passes, 64, 200) == [2, 1, 1, 1, 1, 1]


@given(
    st.lists(st.integers(1, 600), min_size=1, max_size=40),
    st.integers(0, 5000),
    st.integers(0, 20000),
)
def test_calls_take_every_pass_once_in_order_within_their_bounds(passes, at, upto):
    counts = calls(passes, at, upto)
    assert sum(counts) == len(passes) and min(counts) >= 1 and counts[-1] == 1
    first = 0
    for count in counts:
        tokens = sum(passes[first : first + count])
        assert count == 1 or (tokens <= TOGETHER and at + tokens <= upto)
        at += tokens
        first += count


@given(st.integers(0, 500), st.integers(1, 3000))
def test_a_plan_feeds_every_token_once_and_the_last_alone(start, extra):
    total = start + extra
    passes = plan(start, total)
    assert sum(passes) == total - start and passes[-1] == 1 and min(passes) > 0
    assert max(passes) <= max(CHUNK, LONG)  # never one long pass
    ends = [start + sum(passes[: i + 1]) for i in range(len(passes))]
    assert all(end % CHUNK == 0 for end, length in zip(ends, passes) if length == CHUNK and end < total - 1)


@given(st.lists(st.integers(1, 300), min_size=1, max_size=40))
def test_the_record_gives_back_the_passes(passes):
    assert unpack(pack(passes)) == passes
    assert len(pack([64, 3, 1] + [1] * 200)) == 3  # a reply's decoded tokens take one number


def test_records_that_are_not_passes_are_ignored():
    assert unpack("64,1") is None and unpack([64, 0]) is None and unpack([1.5]) is None
    assert usable([9, 1], 10) == [9, 1]
    assert usable([9, 1], 11) is None  # another prompt: fed the default way
    assert usable([10], 10) is None  # the last token must go alone


def test_a_kept_cache_is_reused_up_to_a_pass_end_within_the_shared_tokens():
    have = [CHUNK, 20, 1, 1, 1]  # a fresh prompt of CHUNK + 21 tokens, then two decoded tokens
    assert shared_passes(have, CHUNK + 23, None) == 5  # the next turn: everything
    assert shared_passes(have, CHUNK + 10, None) == 1  # an edit inside the second pass: the chunk only
    assert shared_passes(have, CHUNK - 1, None) == 0
    # a replay that prescribes its passes keeps only the passes that match them one for one
    assert shared_passes(have, CHUNK + 23, [CHUNK, 20, 1, 5, 1]) == 3
    assert shared_passes(have, CHUNK + 23, [CHUNK + 20, 1]) == 0
