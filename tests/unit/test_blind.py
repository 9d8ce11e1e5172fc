"""Blind comparison (session.blind, compare.blind): which replies are compared, the tags a ranking
leaves, and the preference rates read back from them, with exact intervals."""

import random

import pytest
from scipy import stats

from simlab.compare.blind import analyse, lines
from simlab.session.blind import Blind, Picks, candidates, variant
from simlab.session.tree import Tree


def variants_tree():
    """Two variants' trees (a compare sweep): the same turn, replies seeded 1 and 2 under each."""
    tree, replies = Tree(), {}
    for persona, temperature in (("interview", 0.8), ("stage-play", 0.8)):
        frame = tree.add_child(None, "frame", f"{persona} frame", persona=persona)
        user = tree.add_child(frame.id, "user", "What do you want?", speaker="U", persona=persona)
        for seed in (1, 2):
            replies[persona, seed] = tree.add_child(
                user.id, "model", f"{persona} says {seed}", speaker="M", persona=persona, seed=seed,
                params={"temperature": temperature}, origin="sampled",
            )  # fmt: skip
    return tree, replies


def test_the_set_is_the_same_sample_under_each_frame_else_the_siblings():
    tree, r = variants_tree()
    assert candidates(tree, r["interview", 1]) == [r["interview", 1], r["stage-play", 1]]
    user = tree.get(r["stage-play", 2].parent)
    assert candidates(tree, user) == [r["stage-play", 1], r["interview", 1]]
    lone = tree.add_child(None, "frame", "a chat")
    kids = [tree.add_child(lone.id, "model", f"r{k}", seed=50 + k, origin="sampled") for k in range(3)]
    assert candidates(tree, kids[1]) == kids and candidates(tree, lone) == kids


def test_a_ranking_leaves_one_tag_a_reply_and_the_rates_read_back():
    tree, r = variants_tree()
    rng = random.Random(0)
    # five comparisons of the seed-1 pair: stage-play best four times
    for winner in ("stage-play", "stage-play", "interview", "stage-play", "stage-play"):
        blind = Blind.of([r["interview", 1], r["stage-play", 1]], rng)
        blind.rank(next(k for k, n in enumerate(blind.shown) if n.persona == winner) + 1)
        for node_id, tag in blind.tags().items():
            tree.set_tag(node_id, tag)
    with pytest.raises(ValueError, match="pick 1 to 2"):
        blind.rank(3)
    with pytest.raises(ValueError, match="ranked already"):
        blind.rank(blind.ranking[0] + 1)
    assert sum(t.startswith("blind:") for t in tree.get(r["interview", 1].id).tags) == 5
    picks = Picks.of(tree)
    assert picks.wins() == {"stage-play · T 0.8 · unsteered": (4, 5), "interview · T 0.8 · unsteered": (1, 5)}
    report = analyse(picks)
    exact = stats.binomtest(4, 5).proportion_ci(confidence_level=0.95, method="exact")
    best = report["variants"]["stage-play · T 0.8 · unsteered"]
    assert (
        best["rate"] == 0.8
        and best["low"] == pytest.approx(exact.low)
        and best["high"] == pytest.approx(exact.high)
    )
    [pair] = report["pairs"]
    assert (pair["a"], pair["a_above_b"], pair["both"]) == ("interview · T 0.8 · unsteered", 1, 5)
    text = "\n".join(lines(report))
    assert "5 blind comparison(s)" in text and "stage-play · T 0.8 · unsteered     4 of 5" in text


def test_a_full_ranking_counts_in_the_head_to_head_and_the_label_names_the_steering():
    tree, r = variants_tree()
    steered = tree.add_child(
        r["interview", 1].parent, "model", "x", persona="interview", seed=9, params={"temperature": 0.8},
        steer={"terms": [{"vector": "keeper", "strength": 0.5}]}, origin="sampled",
    )  # fmt: skip
    assert variant(steered) == "interview · T 0.8 · keeper:0.5"
    blind = Blind([r["interview", 1], steered, r["interview", 2]])
    for number in (2, 3, 1):
        blind.rank(number)
    for node_id, tag in blind.tags().items():
        tree.set_tag(node_id, tag)
    pairs = Picks.of(tree).pairs()
    assert pairs[("interview · T 0.8 · keeper:0.5", "interview · T 0.8 · unsteered")] == (2, 2)
    assert lines(analyse(Picks(comparisons={})))[0].startswith("no blind comparisons")
    alone = lines(
        analyse(Picks(comparisons={"c": [("a · T 1 · unsteered", 1), ("a · T 1 · unsteered", None)]}))
    )
    assert alone[-1].startswith("note: every reply ranked was one variant")
