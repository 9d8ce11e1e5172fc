"""A shipped persona on the real embedded model: its replies end at its stop strings."""

import pytest

from simlab.persona.library import find
from simlab.session.store import SessionStore
from simlab.turns import sample_replies, start_session


@pytest.mark.slow
def test_a_shipped_persona_samples_a_reply_that_ends_at_its_stop_string(tmp_path, embedded_engine):
    persona = find("interview")
    store = SessionStore(tmp_path / "sessions")
    with start_session(store, persona, "real") as s:
        user = s.add_child(s.tree.cursor, "user", persona.sample_turn, speaker=persona.user)
        replies = sample_replies(
            embedded_engine, s, user.id, persona.sampling_params(seed=1), n=2, speaker=persona.model
        )
    stopped = [r for r in replies if r.finish_reason == "stop"]
    assert stopped, [r.finish_reason for r in replies]
    text = embedded_engine.tokenizer.decode(list(stopped[0].token_ids))
    assert any(stop in text for stop in persona.stop_strings)  # the stop string's tokens end the reply
    assert stopped[0].text and not stopped[0].text.startswith(" ") and "Interviewer:" not in stopped[0].text
