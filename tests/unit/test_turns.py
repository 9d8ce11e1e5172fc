"""The one sample-and-save path (simlab.turns) on the scripted FakeEngine: what a saved reply records."""

import pytest
from conftest import FakeEngine

from simlab.persona.schema import Persona
from simlab.session.store import SessionStore
from simlab.turns import (
    node_fields,
    sample_replies,
    start_continuation,
    start_replies,
    start_session,
    unsaved_path,
)

PERSONA = Persona(
    name="duo",
    frame="Two people talk.\n\n",
    user="Ann",
    model="Bo",
    greeting="Hi.",
    sampling={"max_tokens": 40, "temperature": 0.9},
)


@pytest.fixture
def session(store):
    with start_session(store, PERSONA, "duo") as s:
        yield s


def user_turn(session, text="hello"):
    user = session.add_child(session.tree.cursor, "user", text, speaker="Ann", persona="duo")
    session.goto(user.id)
    return user


def test_siblings_are_seeded_seed_plus_i_and_saved_without_the_stop_string(session, fake_engine):
    user = user_turn(session)
    fake_engine.enqueue([" fine, thanks\nAnn: more", " no\nBo: again", " cut off here"])
    params = PERSONA.sampling_params(seed=40, max_new_tokens=10)
    nodes = sample_replies(fake_engine, session, user.id, params, 3)
    assert [n.seed for n in nodes] == [40, 41, 42]
    assert [n.text for n in nodes] == [
        "fine, tha",
        "no",
        "cut off h",
    ]  # 10 tokens; the lead space is not stored
    assert [n.finish_reason for n in nodes] == ["length", "stop", "length"]
    assert fake_engine.prompts == ["Two people talk.\n\nBo: Hi.\nAnn: hello\nBo:"]
    first = nodes[0]
    assert first.params == {**params.as_record(), "stop": ["\nAnn:", "\nBo:"]} and "seed" not in first.params
    assert first.token_ids == tuple(map(ord, " fine, tha")) and first.logprobs == (-0.5,) * 10
    assert (first.model, first.model_revision, first.dtype, first.persona) == (
        "fake",
        "fake-rev-1",
        "float32",
        "duo",
    )
    reloaded = SessionStore(session.path.parent).open("duo", read_only=True)
    assert reloaded.tree.get(first.id).to_record() == first.to_record()


def test_the_persona_defaults_to_the_frames_and_none_stays_none(session, fake_engine):
    user = user_turn(session)
    params = PERSONA.sampling_params(seed=1)
    [default] = sample_replies(fake_engine, session, user.id, params)
    [none] = sample_replies(fake_engine, session, user.id, params, persona=None)
    assert default.persona == "duo" and none.persona is None


def test_interrupted_before_a_token_is_not_kept_and_keep_decides(session, fake_engine):
    user = user_turn(session)
    replies = start_replies(fake_engine, session, user.id, PERSONA.sampling_params(seed=3), 2)
    replies.run.interrupt()  # before the first token
    replies.decode()
    assert replies.save() == [] and len(session.tree.children(user.id)) == 0
    replies = start_replies(fake_engine, session, user.id, PERSONA.sampling_params(seed=3), 2)
    replies.decode(on_delta=lambda delta: True)  # the callback stops the run at the first delta
    saved = replies.save(keep=lambda c: True)
    assert [n.finish_reason for n in saved] == ["interrupted", "interrupted"]
    assert [len(n.token_ids) for n in saved] == [1, 0]


def test_a_continuation_joins_the_texts_and_is_not_one_reproducible_draw(session, fake_engine):
    user = user_turn(session)
    [reply] = sample_replies(
        fake_engine.enqueue([" It is"]), session, user.id, PERSONA.sampling_params(seed=5)
    )
    replies = start_continuation(
        fake_engine.enqueue([" late."]), session, reply, PERSONA.sampling_params(seed=6)
    )
    replies.decode()
    [longer] = replies.save(keep=lambda c: True)
    assert fake_engine.prompts[-1] == "Two people talk.\n\nBo: Hi.\nAnn: hello\nBo: It is"
    assert longer.text == "It is late." and longer.parent == reply.parent and longer.edited_from == reply.id
    assert longer.params is None and longer.seed is None and "continued" in longer.tags
    assert longer.token_ids == tuple(map(ord, " late."))


def test_a_servers_reply_records_where_it_came_from_and_no_ids(session):
    server = FakeEngine(local=False)
    user = user_turn(session)
    [reply] = sample_replies(server, session, user.id, PERSONA.sampling_params(seed=2))
    assert reply.token_ids == () and reply.dtype is None and reply.logprobs
    assert reply.backend == {"kind": "fake", "base_url": "fake://server"}
    completion = server.generate("x", PERSONA.sampling_params(seed=2))[0]
    assert node_fields(completion, None, server)["seed"] is None


def test_an_unsaved_path_is_the_frame_greeting_and_exchanges():
    path = unsaved_path(PERSONA, [("one", "uno"), ("two", None)])
    assert [(n.role, n.speaker, n.text) for n in path] == [
        ("frame", None, "Two people talk.\n\n"),
        ("model", "Bo", "Hi."),
        ("user", "Ann", "one"),
        ("model", "Bo", "uno"),
        ("user", "Ann", "two"),
    ]
    assert path[0].framing == PERSONA.framing().to_dict()


def test_a_document_continues_its_text_as_it_is_and_keeps_every_character(store, fake_engine):
    """A Loom tree (a frame without framing, pieces without speakers): the prompt is the document,
    no label, no stop string, and each continuation is stored as the model wrote it."""
    from simlab.frame.render import framing_of, render_path

    with store.create("doc") as session:
        root = session.add_child(None, "frame", "Once upon a time")
        typed = session.add_child(root.id, "user", ", in a valley,")
        assert framing_of(session.tree.path(typed.id)).mode == "document"
        fake_engine.enqueue([" there lived\nUser: a fox.\n", " a river ran"])
        params = PERSONA.sampling_params(seed=3, max_new_tokens=30).with_overrides(stop=())
        first, second = sample_replies(fake_engine, session, typed.id, params, 2)
        assert fake_engine.prompts == ["Once upon a time, in a valley,"]
        assert (first.text, first.speaker, first.finish_reason) == (
            " there lived\nUser: a fox.\n",
            None,
            "eos",
        )
        assert second.text == " a river ran"
        assert (
            render_path(session.tree.path(first.id))
            == "Once upon a time, in a valley, there lived\nUser: a fox.\n"
        )
        fake_engine.enqueue([" Then"])
        more = start_continuation(fake_engine, session, first, params)
        more.decode()
        [joined] = more.save()
        assert joined.text == " there lived\nUser: a fox.\n Then"
        assert fake_engine.prompts[-1] == "Once upon a time, in a valley, there lived\nUser: a fox.\n"


def test_a_turn_with_a_speaker_keeps_a_frame_without_framing_a_transcript(store, fake_engine):
    from simlab.frame.render import framing_of

    with store.create("old") as session:
        root = session.add_child(None, "frame", "A talk.\n")
        user = session.add_child(root.id, "user", "hi", speaker="User")
        assert framing_of(session.tree.path(user.id)).mode == "simulator"
