"""session.html.token_spans: a reply's text cut at its tokens, with what the export knows of each."""

import math

from simlab.session.html import token_spans
from simlab.session.tree import make_node


def node(text, ids, tops, logprobs=None):
    logprobs = logprobs or [math.log(0.5)] * len(ids)
    return make_node(
        "p", "model", text, speaker="Bo", token_ids=tuple(ids), logprobs=tuple(logprobs), top=tuple(tops)
    )


def test_tokens_spell_the_text_after_the_label_space():
    n = node("Aye, sir", [1, 2, 3], [((1, " Aye", -0.1),), ((2, ",", -0.2),), ((3, " sir", -0.3),)])
    spans = token_spans(n, " ")
    assert [s["text"] for s in spans] == ["Aye", ",", " sir"]
    assert spans[0]["p"] == 0.5 and spans[0]["alts"] == [[" Aye", round(math.exp(-0.1), 4)]]


def test_a_token_outside_its_alternatives_joins_its_unknown_neighbours_without_a_probability():
    tops = [((1, " Aye", -0.1),), ((9, "?", -0.2),), ((8, "!", -0.2),), ((3, " sir", -0.3),)]
    spans = token_spans(node("Aye, you sir", [1, 2, 7, 3], tops), " ")
    assert [(s["text"], s["p"]) for s in spans] == [("Aye", 0.5), (", you", None), (" sir", 0.5)]


def test_tokens_that_do_not_spell_the_text_give_none_and_the_page_shows_plain_text():
    assert token_spans(node("Edited", [1], [((1, " Aye", -0.1),)]), " ") is None
    assert token_spans(make_node("p", "user", "typed"), " ") is None


def test_a_first_token_without_the_label_space_starts_at_the_text():
    n = node("Aye", [1, 2], [((1, "A", -0.1),), ((2, "ye", -0.2),)])
    assert [s["text"] for s in token_spans(n, " ")] == ["A", "ye"]


def test_tokens_past_the_text_spelled_the_stop_string_and_have_no_part():
    from simlab.session.tokens import token_parts

    tops = [((1, " Aye", -0.1),), ((2, ".\n", -0.2),), ((3, "Ann", -0.3),), ((4, ":", -0.1),)]
    n = node("Aye.", [1, 2, 3, 4], tops)
    assert token_parts(n, " ") == [("Aye", True), (".", True), ("", True), ("", True)]
    assert [s["text"] for s in token_spans(n, " ")] == ["Aye", "."]
    tops[1] = ((9, "?", -0.2),)
    assert token_parts(node("Aye, you.", [1, 2, 3, 4], tops), " ") is None  # "Ann" is not in the text
    assert token_parts(node("Aye, you.", [1, 2, 7], tops[:2] + [((5, "x", -1.0),)]), " ") == [
        ("Aye", True),
        (", you.", False),
        ("", False),
    ]
