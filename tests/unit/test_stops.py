"""Where a reply ends: stop strings, and the speaker-label variants a base model writes instead of
the exact label (the name alone on its line, another case of an all-caps name, another first name)."""

import io

import pytest

from simlab.engine.textstream import TextStops, find_stop, pending_stop_prefix
from simlab.persona.schema import Persona
from simlab.repl.screen import LineView
from simlab.repl.state import Chat

INTERVIEW = ("\nInterviewer:", "\nDr. Okafor:")
PLAY = ("\nINSPECTOR.", "\nKEEPER.")


@pytest.mark.parametrize(
    "stops, text, stopped_by",
    [
        (INTERVIEW, "Well.\nDr. Okafor: yes", "\nDr. Okafor:"),
        (INTERVIEW, "Well.\nMaya Okafor: yes", "\nMaya Okafor:"),
        (INTERVIEW, "Well.\nOkafor: yes", "\nOkafor:"),
        (INTERVIEW, "Well.\nInterviewer\nSo", "\nInterviewer\n"),
        (PLAY, "Aye.\n\nINSPECTOR\n(he sits)", "\nINSPECTOR\n"),
        (PLAY, "Aye.\nInspector. Then", "\nInspector."),
        (PLAY, "Aye.\nkeeper. Then", "\nkeeper."),
    ],
)
def test_a_speaker_label_variant_ends_the_reply_where_its_line_starts(stops, text, stopped_by):
    assert find_stop(text, stops, 0) == (text.index(stopped_by), stopped_by)


@pytest.mark.parametrize(
    "stops, text",
    [
        (INTERVIEW, "I met Dr. Okafor: she was kind."),  # mid-line: not a turn
        (INTERVIEW, "Well.\nI think that Okafor: no"),  # three words before the name: a sentence
        (INTERVIEW, "Well.\ninterviewer: lower case"),  # only all-caps names match in any case
        (INTERVIEW, "Well.\nInterviewers are kind"),
        (("\n>",), "Dark.\nYou see"),  # a label with no name has no variants
    ],
)
def test_text_that_only_looks_like_a_label_goes_on(stops, text):
    assert find_stop(text, stops, 0) is None


def test_a_line_start_that_may_still_become_a_label_is_held_back_and_nothing_else():
    assert pending_stop_prefix("Yes.\nMaya Oka", INTERVIEW) == len("\nMaya Oka")
    assert pending_stop_prefix("Yes.\nI think so, and", INTERVIEW) == 0
    stream = TextStops(INTERVIEW)
    shown = "".join(stream.add(c) for c in "Sure.\nShe said no.\nMaya Okafor: no")
    assert shown == "Sure.\nShe said no." and stream.stop_string == "\nMaya Okafor:"


def test_the_repl_stops_a_reply_at_a_variant_label(fake_engine, store):
    persona = Persona(name="iv", frame="An interview.\n\n", user="Interviewer", model="Dr. Okafor")
    out = io.StringIO()
    chat = Chat.new(
        fake_engine.enqueue([" Fine.\nMaya Okafor: and more"]),
        store,
        persona,
        persona.sampling_params(seed=1),
        LineView(out),
    )
    [reply] = chat.user_turn("how are you?")
    assert reply.text == "Fine." and reply.finish_reason == "stop"


def test_a_reply_cut_off_in_the_next_speakers_label_leaves_the_label_out():
    """At max tokens (or eos) a last line that is only the start of a label ("\nInterviewer") is
    not the reply's: left in, the next turn's prompt would hold a label with nothing after it."""
    from conftest import FakeTokenizer

    from simlab.engine.textstream import TextTracker, dangling_label

    for stops, text, kept in [
        (INTERVIEW, "It was late.\nInterviewer", "It was late."),
        (INTERVIEW, "It was late.\nMaya Oka", "It was late."),
        (PLAY, "Aye.\nINSPEC", "Aye."),
        (INTERVIEW, "It was late, and the", "It was late, and the"),  # mid-line: the reply's own
        (("END",), "the EN", "the EN"),  # a stop that is no label line: kept as before
    ]:
        tokenizer = FakeTokenizer()
        tracker = TextTracker(tokenizer, tokenizer.encode("Q: "), stops)
        shown = "".join(tracker.add(i) for i in tokenizer.encode(text)) + tracker.finish()
        assert shown == kept, text
        stream = TextStops(stops)
        assert "".join(stream.add(c) for c in text) + stream.finish() == kept, text
        assert dangling_label(text, stops) == len(text) - len(kept)
