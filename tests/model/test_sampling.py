"""Each sampling step against the transformers logits processor it mirrors, on hand-made tensors."""

import math

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from simlab.engine import logits as sampling
from simlab.engine.params import BY_FIELD, SamplingParams
from simlab.errors import SamplingError


def scores(seed: int, batch: int = 2, vocab: int = 10, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * scale


IDS = torch.tensor([[1, 3, 3, 7], [0, 2, 9, 9]])


def assert_same_filter(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    finite = ~torch.isinf(theirs)
    assert torch.allclose(ours[finite], theirs[finite])


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
def test_repetition_penalty_matches_transformers(seed, penalty):
    x = scores(seed)
    theirs = RepetitionPenaltyLogitsProcessor(penalty)(IDS, x.clone())
    ours = sampling.apply_repetition_penalty(x, IDS, penalty)
    assert torch.allclose(ours, theirs)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("t", [0.3, 0.8, 1.7])
def test_temperature_matches_transformers(seed, t):
    x = scores(seed)
    assert torch.allclose(sampling.apply_temperature(x, t), TemperatureLogitsWarper(t)(IDS, x.clone()))


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("k", [1, 3, 9])
def test_top_k_matches_transformers(seed, k):
    x = scores(seed)
    assert_same_filter(sampling.apply_top_k(x, k), TopKLogitsWarper(k)(IDS, x.clone()))


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.95, 0.999])
def test_top_p_matches_transformers(seed, p):
    x = scores(seed)
    assert_same_filter(sampling.apply_top_p(x, p), TopPLogitsWarper(p)(IDS, x.clone()))


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("p", [0.5, 0.95])
def test_top_p_prefilter_and_wide_cut_agree_on_a_large_vocabulary(seed, p):
    # Flat logits put the nucleus beyond the prefilter (the lowered cut); peaked ones keep it inside.
    for scale in (0.5, 6.0):
        x = scores(seed, batch=3, vocab=5000, scale=scale)
        assert_same_filter(sampling.apply_top_p(x, p), TopPLogitsWarper(p)(IDS, x.clone()))


@pytest.mark.parametrize("seed", range(5))
def test_a_wide_nucleus_after_top_k_stops_at_the_last_finite_token(seed):
    # top-k leaves -inf behind; a p near 1 needs every finite token, and the cut must stop there.
    x = sampling.apply_top_k(scores(seed, batch=2, vocab=5000, scale=0.1), 3000)
    for p in (0.999, 0.9999999):
        got = sampling.apply_top_p(x, p)
        assert_same_filter(got, TopPLogitsWarper(p)(IDS, x.clone()))
        assert int((~torch.isinf(got)).sum(-1).max()) > 1024


def test_top_p_prefilter_is_really_used_when_mass_is_concentrated(monkeypatch):
    x = scores(0, batch=2, vocab=5000, scale=8.0)
    monkeypatch.setattr(sampling, "_top_p_wide", lambda *a: pytest.fail("the prefilter holds it here"))
    kept = ~torch.isinf(sampling.apply_top_p(x, 0.9))
    assert 1 <= kept.sum(-1).max() < 1024


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("min_p", [0.05, 0.2, 0.6])
def test_min_p_matches_transformers(seed, min_p):
    x = scores(seed)
    assert_same_filter(sampling.apply_min_p(x, min_p), MinPLogitsWarper(min_p)(IDS, x.clone()))


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("mass", [0.2, 0.6, 0.9])
def test_typical_p_matches_transformers(seed, mass):
    x = scores(seed)
    assert_same_filter(sampling.apply_typical_p(x, mass), TypicalLogitsWarper(mass)(IDS, x.clone()))


def test_steps_do_not_modify_their_input():
    x = scores(3)
    before = x.clone()
    params = SamplingParams(
        temperature=0.7, top_k=5, top_p=0.8, min_p=0.1, typical_p=0.9, repetition_penalty=1.2
    )
    out = sampling.process_logits(x, IDS, params)
    assert torch.equal(x, before)
    assert torch.isinf(out).any()


def test_chain_matches_transformers_chain_in_order():
    params = SamplingParams(temperature=0.7, top_k=6, top_p=0.9, min_p=0.05, repetition_penalty=1.3)
    chain = [
        RepetitionPenaltyLogitsProcessor(1.3),
        TemperatureLogitsWarper(0.7),
        TopKLogitsWarper(6),
        TopPLogitsWarper(0.9),
        MinPLogitsWarper(0.05),
    ]
    for seed in range(20):
        x = scores(seed)
        theirs = x.clone()
        for step in chain:
            theirs = step(IDS, theirs)
        assert_same_filter(sampling.process_logits(x, IDS, params), theirs)


def test_greedy_skips_filters_but_applies_repetition_penalty():
    x = torch.tensor([[5.0, 4.9, 0.0]])
    params = SamplingParams(temperature=0, repetition_penalty=2.0)
    picked = sampling.sample(sampling.process_logits(x, torch.tensor([[0]]), params), None, greedy=True)
    assert picked.tolist() == [1]


def test_sample_uses_each_rows_own_generator():
    x = torch.zeros(2, 1000)
    gens = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)]
    a, b = sampling.sample(x, gens, greedy=False).tolist()
    assert a == b
    again = sampling.sample(x[:1], [torch.Generator().manual_seed(5)], greedy=False).tolist()
    assert again == [a]


def test_sample_never_picks_filtered_tokens():
    x = torch.tensor([[0.0, -math.inf, 1.0, -math.inf]])
    gen = torch.Generator().manual_seed(0)
    picks = {int(sampling.sample(x, [gen], greedy=False)) for _ in range(200)}
    assert picks == {0, 2}


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -1},
        {"top_p": 0},
        {"top_p": 1.5},
        {"top_k": -2},
        {"min_p": 1.0},
        {"typical_p": 0},
        {"repetition_penalty": 0},
        {"max_new_tokens": 0},
        {"seed": -1},
        {"stop": ("",)},
        {"temperature": float("nan")},
    ],
)
def test_invalid_params_name_the_value_and_the_fix(bad):
    with pytest.raises(SamplingError) as info:
        SamplingParams(**bad)
    name = next(iter(bad))
    name = BY_FIELD[name].key if name in BY_FIELD else name  # as users write it: max_new_tokens -> max_tokens
    assert name in str(info.value) and ("use" in str(info.value) or "must" in str(info.value))


def test_with_overrides_rejects_unknown_names():
    with pytest.raises(SamplingError, match="unknown sampling parameter 'temp'"):
        SamplingParams().with_overrides(temp=1.0)
    assert SamplingParams().with_overrides(top_p=0.5).top_p == 0.5


def test_the_cdf_sampler_draws_from_the_filtered_distribution():
    torch.manual_seed(0)
    logits = torch.randn(1, 12) * 2
    params = SamplingParams(temperature=0.9, top_p=0.9)
    processed = sampling.process_logits(logits, None, params)
    probs = processed.softmax(-1)[0]
    gen = torch.Generator().manual_seed(11)
    draws = 20000
    counts = torch.zeros(12)
    for _ in range(draws):
        counts[int(sampling.sample(processed, [gen], greedy=False, method="cdf"))] += 1
    assert counts[probs == 0].sum() == 0  # never a filtered token
    kept = probs > 0
    expected = probs[kept] * draws
    chi2 = float(((counts[kept] - expected) ** 2 / expected).sum())
    assert chi2 < 30  # kept tokens <= 12: the 99.9% quantile of chi-square with 11 dof is ~31


def test_the_cdf_sampler_is_one_uniform_per_row_and_reproducible():
    logits = torch.randn(3, 50)
    picks = [
        sampling.sample(logits, [torch.Generator().manual_seed(s) for s in (1, 2, 3)], greedy=False)
        for _ in range(2)
    ]
    assert picks[0].tolist() == picks[1].tolist()
    alone = sampling.sample(logits[1:2], [torch.Generator().manual_seed(2)], greedy=False)
    assert int(alone) == int(picks[0][1])  # a row's draw does not depend on the other rows
    gen = torch.Generator().manual_seed(4)
    sampling.sample(logits[:1], [gen], greedy=False)
    fresh = torch.Generator().manual_seed(4)
    torch.rand(1, generator=fresh, dtype=torch.float64)
    assert torch.equal(gen.get_state(), fresh.get_state())  # exactly one draw consumed


def test_nodes_sampled_before_the_sampler_was_recorded_replay_with_multinomial():
    from simlab.replay import params_of
    from simlab.session.tree import make_node

    old = make_node("p", "model", "x", params={"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 5}, seed=3)
    new = make_node("p", "model", "x", params={"temperature": 0.8, "sampler": "cdf"}, seed=3)
    assert params_of(old, {}).sampler == "multinomial" and params_of(new, {}).sampler == "cdf"
    with pytest.raises(Exception, match="sampler='dice' is invalid"):
        SamplingParams(sampler="dice")


def peaked(seed: int, batch: int = 3, vocab: int = 20000) -> torch.Tensor:
    """Like a language model's logits: a long tail and a few strong tokens."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=g) * 2.0
    for row in logits:
        row[torch.randint(0, vocab, (30,), generator=g)] += torch.rand(30, generator=g) * 14
    return logits


CHOICES = [
    SamplingParams(temperature=0.8, top_p=0.95),
    SamplingParams(temperature=1.0, top_p=1.0, top_k=40),
    SamplingParams(temperature=0.7, top_p=0.9, top_k=50),
    SamplingParams(temperature=1.2, top_p=1.0, min_p=0.05),
    SamplingParams(temperature=0.9, top_p=0.9, min_p=0.1),
    SamplingParams(temperature=0.8, top_p=0.95, repetition_penalty=1.3),
]


@pytest.mark.parametrize("params", CHOICES)
def test_choosing_among_the_best_candidates_keeps_and_draws_what_the_whole_row_does(params, monkeypatch):
    """`choose` works on each row's best tokens; it keeps the very tokens the whole-row steps keep
    and draws the same token from the same generator state, consuming one draw per row."""
    context = torch.tensor([[5, 9, 9, 17]] * 3)
    whole = sampling.sample
    monkeypatch.setattr(sampling, "sample", lambda *a: pytest.fail("left the candidates"))
    for trial in range(25):
        logits = peaked(trial)
        processed = sampling.process_logits(logits, context, params)
        scaled = sampling.apply_temperature(
            sampling.apply_repetition_penalty(logits, context, params.repetition_penalty), params.temperature
        )
        log_total = torch.logsumexp(scaled, -1, keepdim=True)
        values, ids, kept = sampling._kept_among(scaled, sampling.best_of(scaled, 256), params, log_total)
        mask = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, ids, kept)
        assert torch.equal(mask, processed.isfinite()), trial
        ours = [torch.Generator().manual_seed(100 * trial + r) for r in range(3)]
        theirs = [torch.Generator().manual_seed(100 * trial + r) for r in range(3)]
        picked = sampling.choose(logits, context, params, ours)
        assert picked.tolist() == whole(processed, theirs, False, "cdf").tolist(), trial
        assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(ours, theirs))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0, top_p=0.95),  # a nucleus wider than any candidate set
        SamplingParams(temperature=1.0, top_p=1.0, top_k=5000),  # more than the candidates
        SamplingParams(temperature=1.0, top_p=0.9, typical_p=0.8),  # typical-p reads the whole row
        SamplingParams(temperature=1.0, top_p=0.9, sampler="multinomial"),
    ],
)
def test_choosing_falls_back_to_the_whole_row_where_the_candidates_may_not_hold_the_kept_tokens(params):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 20000, generator=g) * 0.2  # flat: thousands of tokens in the nucleus
    ours = [torch.Generator().manual_seed(r) for r in range(2)]
    theirs = [torch.Generator().manual_seed(r) for r in range(2)]
    processed = sampling.process_logits(logits, None, params)
    assert int(processed.isfinite().sum()) > 4096 or params.typical_p < 1 or params.sampler != "cdf"
    picked = sampling.choose(logits, None, params, ours)
    assert picked.tolist() == sampling.sample(processed, theirs, False, params.sampler).tolist()


def test_a_flat_row_skips_the_larger_candidate_search_and_a_wide_one_still_takes_it(monkeypatch):
    """Where the best 256 tokens and the rest at the 256th's probability cannot reach top-p, the
    4,096-token search is skipped (it could not hold the nucleus); where they can, it runs and the
    draw stays among the candidates."""
    sizes = []
    best = sampling.best_of
    monkeypatch.setattr(sampling, "best_of", lambda x, k: sizes.append(k) or best(x, k))
    params = SamplingParams(temperature=1.0, top_p=0.95)
    g = torch.Generator().manual_seed(5)
    flat = torch.randn(1, 50_000, generator=g) * 0.2
    theirs = sampling.sample(
        sampling.process_logits(flat, None, params), [torch.Generator().manual_seed(1)], False
    )
    sizes.clear()
    assert sampling.choose(flat, None, params, [torch.Generator().manual_seed(1)]).tolist() == theirs.tolist()
    assert 4096 not in sizes and 256 in sizes
    wide = torch.full((1, 50_000), -30.0)
    wide[0, :2000] = torch.randn(2000, generator=g) * 0.3  # ~2,000 tokens hold nearly all the mass
    monkeypatch.setattr(sampling, "sample", lambda *a: pytest.fail("left the candidates"))
    sizes.clear()
    sampling.choose(wide, None, params, [torch.Generator().manual_seed(1)])
    assert sizes == [256, 4096]


def test_a_row_whose_best_256_cannot_tell_skips_the_larger_search_by_its_levels(monkeypatch):
    """A row like a random-weights model's at temperature 0.8 (32,000 tokens): its best 256 and the
    rest at the 256th's probability would pass top-p, but its best 4,096 hold about half the mass;
    the levels tell, the search is skipped, and the draw is the whole row's, as with the search."""
    sizes = []
    best = sampling.best_of
    monkeypatch.setattr(sampling, "best_of", lambda x, k: sizes.append(k) or best(x, k))
    params = SamplingParams(temperature=0.8, top_p=0.95)
    rows = torch.randn(2, 32000, generator=torch.Generator().manual_seed(6)) * 1.2 * 0.8
    theirs = sampling.sample(
        sampling.process_logits(rows, None, params),
        [torch.Generator().manual_seed(r) for r in range(2)],
        False,
    )
    sizes.clear()
    assert (
        sampling.choose(rows, None, params, [torch.Generator().manual_seed(r) for r in range(2)]).tolist()
        == theirs.tolist()
    )
    assert sizes[0] == 256 and 4096 not in sizes
    monkeypatch.setattr(sampling, "_reach", lambda *a: torch.full((2,), math.inf))  # as before the levels
    sizes.clear()
    assert (
        sampling.choose(rows, None, params, [torch.Generator().manual_seed(r) for r in range(2)]).tolist()
        == theirs.tolist()
    )
    assert sizes[:2] == [256, 4096]


@pytest.mark.parametrize("size", [256, 4096])
def test_reach_is_at_least_the_mass_of_the_best_tokens(size):
    """`_reach` bounds the best `size` tokens' mass from above on rows from peaked to flat, with a
    -inf tail (top-k's), ties, and more than the levels span; a row with no finite best is unbounded."""
    g = torch.Generator().manual_seed(size)
    rows = torch.cat([torch.randn(1, 30000, generator=g) * scale for scale in (0.05, 0.5, 1.5, 4.0, 12.0)])
    rows[1, 20000:] = -math.inf
    rows[2, :3000] = rows[2].max()
    total = torch.logsumexp(rows, -1, keepdim=True)
    ordered = rows.sort(descending=True).values
    mass = (ordered[:, :size].double() - total.double()).exp().sum(-1)
    reach = sampling._reach(rows, ordered[:, 0], total, size)
    assert bool((reach >= mass).all()) and bool((reach < mass * 1.2 + 1e-9).any())
    dead = torch.full((1, 100), -math.inf)
    assert math.isinf(
        float(sampling._reach(dead, dead[:, 0], torch.logsumexp(dead, -1, keepdim=True), size)[0])
    )


def test_choosing_greedily_is_the_best_token_after_the_penalty():
    logits = torch.tensor([[1.0, 3.0, 2.9, 0.0]])
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    assert sampling.choose(logits, torch.tensor([[1]]), params, None).tolist() == [2]


def test_choosing_with_nan_logits_goes_the_whole_row_way():
    logits = torch.full((1, 5000), math.nan)
    logits[0, :100] = torch.randn(100)
    params = SamplingParams(temperature=0.8, top_p=0.95)
    theirs = sampling.sample(
        sampling.process_logits(logits, None, params), [torch.Generator().manual_seed(1)], False
    )
    ours = sampling.choose(logits, None, params, [torch.Generator().manual_seed(1)])
    assert ours.tolist() == theirs.tolist()


@pytest.mark.parametrize("kind", ["plain", "ties", "infinities", "signed zeros", "large"])
def test_the_keyed_sort_is_torchs_stable_descending_sort(kind):
    from simlab.engine.logits import descending

    g = torch.Generator().manual_seed(len(kind))
    for _ in range(20):
        n = 49_152 if kind == "large" else int(torch.randint(1, 3000, (1,), generator=g))
        v = torch.randn(n, generator=g) * 3
        if kind == "ties":
            v = (v * 2).round() / 2
        if kind == "infinities":
            v[torch.randint(0, n, (n // 2 + 1,), generator=g)] = -float("inf")
        if kind == "signed zeros":
            v[::2], v[1::3] = 0.0, -0.0
        assert torch.equal(descending(v), torch.sort(v, descending=True, stable=True).indices)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.95, 0.999, 0.99999])
def test_the_c_nucleus_is_torchs_sort_and_cumsum_exactly(p):
    from simlab.models import native, ranking

    if native.library() is None:
        pytest.skip(f"no simlab kernel here ({native.why()})")
    g = torch.Generator().manual_seed(int(p * 1e5))
    for trial in range(12):
        n = 151_936 if trial == 0 else int(torch.randint(1, 60_000, (1,), generator=g))
        v = torch.randn(n, generator=g) * float(torch.rand(1, generator=g) * 4 + 0.05)
        if trial % 3 == 1:  # ties, decided by position
            v = (v * 2).round() / 2
        if trial % 4 == 2:
            v[::2], v[1::3] = 0.0, -0.0
        probs = (v - torch.logsumexp(v, -1, keepdim=True)).exp()
        order = sampling.descending(v)
        want = sampling._nucleus(v, probs[order], torch.arange(n)[order], p)
        assert torch.equal(ranking.nucleus(v, probs, p), want)


def test_a_wide_nucleus_keeps_what_the_torch_path_keeps(monkeypatch):
    from simlab.models import ranking

    logits = torch.randn(3, 151_936, generator=torch.Generator().manual_seed(1))  # flat: wide nuclei
    fast = sampling.apply_top_p(logits, 0.95)
    monkeypatch.setattr(ranking, "nucleus_rows", lambda *args: None)
    monkeypatch.setattr(ranking, "above", lambda row, cut: row[row >= cut])
    assert torch.equal(fast, sampling.apply_top_p(logits, 0.95))
    assert (fast.isfinite().sum(-1) > 1024).all()  # (the wide path ran)


@pytest.mark.parametrize("kind", ["flat", "peaked", "filtered"])
def test_the_c_draw_is_torchs_cumsum_and_searchsorted(kind):
    """`sample`'s draw in C: the same token as torch's double cumsum and searchsorted over the kept
    tokens, and the same one uniform taken from the generator."""
    from simlab.models import native, ranking

    if native.library() is None:
        pytest.skip(f"no simlab kernel here ({native.why()})")
    g = torch.Generator().manual_seed(len(kind))
    for trial in range(40):
        n = 151_936 if trial % 10 == 0 else int(torch.randint(1, 60_000, (1,), generator=g))
        logits = torch.randn(n, generator=g) * (0.2 if kind == "flat" else 6.0)
        if kind == "filtered":  # most tokens dropped, their probability 0
            logits[torch.rand(n, generator=g) < 0.9] = -float("inf")
            logits[0] = 0.0
        probs = logits.softmax(-1)
        ours, theirs = torch.Generator().manual_seed(trial), torch.Generator().manual_seed(trial)
        kept = probs.nonzero().squeeze(-1)
        cdf = probs[kept].double().cumsum(0)
        u = torch.rand(1, generator=theirs, dtype=torch.float64) * cdf[-1]
        want = int(kept[torch.searchsorted(cdf, u, right=True).clamp(max=len(kept) - 1)])
        assert ranking.draws(probs[None], [ours])[0] == want, trial
        assert torch.equal(ours.get_state(), theirs.get_state())


def test_the_c_nucleus_ranks_only_near_the_cut_where_the_sums_are_exact():
    """A long row whose probabilities sum exactly (each >= 2^-29) ranks only the tokens near the cut;
    the kept tokens are the full ranking's, also where a run of ties straddles the cut, and where a
    tiny probability makes the sums inexact (then the row is ranked whole)."""
    from simlab.models import native, ranking

    if native.library() is None:
        pytest.skip(f"no simlab kernel here ({native.why()})")
    g = torch.Generator().manual_seed(7)
    for trial in range(30):
        n = int(torch.randint(8193, 160_000, (1,), generator=g))
        v = torch.randn(n, generator=g) * float(torch.rand(1, generator=g) * 0.8 + 0.05)
        if trial % 3 == 0:  # coarse values: runs of ties, one of them at the cut
            v = (v * 8).round() / 8
        if trial % 5 == 1:  # one token holds nearly all: the others far below 2^-29 each
            v[0] = 40.0
        probs = (v - torch.logsumexp(v, -1, keepdim=True)).exp()
        exact = bool((probs >= 2**-29).all())
        for p in (0.3, 0.9, 0.95, 0.999):
            kept = torch.empty(n, dtype=torch.bool)
            args = (v.data_ptr(), probs.data_ptr(), n, p, kept.data_ptr())
            assert ranking._declared(native.library()).simlab_nucleus(*args) == (
                1 if exact else 0
            )  # (the way)
            order = sampling.descending(v)
            want = sampling._nucleus(v, probs[order], torch.arange(n)[order], p)
            assert torch.equal(kept, want) and torch.equal(ranking.nucleus(v, probs, p), want), (trial, p)
            for cut in (float(v.min()), float(v[want].min())):  # (all in; the least kept: ties cut)
                kept_row = ranking.nucleus_rows(v[None], [(cut, ranking.above(v, cut), probs[v >= cut])], p)[
                    0
                ]
                assert torch.equal(kept_row, v.masked_fill(~want, -float("inf"))), (trial, p)


def test_a_kept_set_out_of_rank_order_is_told_token_by_token():
    """Top-p's masses rounded to float can keep a token ranked below one it drops (here the third
    of four is dropped, the fourth kept); the row nucleus_rows gives is still torch's rule's, not
    the tokens down to the least kept value."""
    from simlab.models import native, ranking

    if native.library() is None:
        pytest.skip(f"no simlab kernel here ({native.why()})")
    v = torch.tensor([3.0, 2.0, 1.0, 0.5, -1.0])
    probs = torch.tensor([0.8999999165534973, 1.524048620638041e-08, 1.6203268060621667e-08, 0.05, 0.04])
    want = sampling._nucleus(v, probs, torch.arange(5), 0.9)
    assert want.tolist() == [True, True, False, True, False]
    kept_row = ranking.nucleus_rows(v[None], [(0.0, ranking.above(v, 0.0), probs[:4])], 0.9)[0]
    assert kept_row.tolist() == [3.0, 2.0, -float("inf"), 0.5, -float("inf")]


def test_wide_rows_sampled_together_are_each_row_alone(monkeypatch):
    """Four flat rows (random weights' nuclei: most of the vocabulary) go through top-p and the draw
    with their passes spread over the threads: each row's kept tokens and token are what it gets
    alone, and what torch's whole-row steps give."""
    from simlab.models import ranking

    logits = torch.randn(4, 151_936, generator=torch.Generator().manual_seed(5)) * 0.5
    together = sampling.apply_top_p(logits, 0.95)
    for i, row in enumerate(logits):
        assert torch.equal(together[i], sampling.apply_top_p(row[None], 0.95)[0]), i
    probs = together.softmax(-1)
    picks = ranking.draws(probs, [torch.Generator().manual_seed(s) for s in range(4)])
    assert picks == [ranking.draws(probs[i : i + 1], [torch.Generator().manual_seed(i)])[0] for i in range(4)]
    params = SamplingParams(temperature=1.0, top_p=0.95)
    drawn = sampling.choose(logits, None, params, [torch.Generator().manual_seed(s) for s in range(4)])
    for i in range(4):
        alone = sampling.choose(logits[i : i + 1], None, params, [torch.Generator().manual_seed(i)])
        assert int(alone) == int(drawn[i]), i
    monkeypatch.setattr(ranking, "nucleus_rows", lambda *args: None)  # torch's steps
    monkeypatch.setattr(ranking, "draws", lambda *args: None)
    assert torch.equal(sampling.apply_top_p(logits, 0.95), together)
    again = sampling.choose(logits, None, params, [torch.Generator().manual_seed(s) for s in range(4)])
    assert torch.equal(again, drawn)


def test_the_c_nucleus_takes_values_whose_range_overflows_a_float():
    """Logits at +-2e38 with exact sums: their range (4e38) is past float's, so the value slices that
    find the tokens near the cut cannot be cut; the row is ranked whole (it wrote out of bounds)."""
    from simlab.models import native, ranking

    if native.library() is None:
        pytest.skip(f"no simlab kernel here ({native.why()})")
    v = torch.zeros(10_000)
    v[0], v[1] = 2e38, -2e38
    probs = torch.zeros(10_000)
    probs[0] = 1.0
    want = sampling._nucleus(v, probs[sampling.descending(v)], sampling.descending(v), 0.9)
    assert torch.equal(ranking.nucleus(v, probs, 0.9), want) and int(want.sum()) == 1
