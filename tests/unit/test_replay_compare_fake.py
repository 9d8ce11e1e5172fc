"""Replay and compare logic on the scripted FakeEngine (no torch): what they sample, with which seeds,
what they save, and that a rerun of a sweep samples only what is missing."""

import tempfile
from pathlib import Path

import pytest
from conftest import FakeEngine

from simlab.compare.spec import build_spec
from simlab.compare.stats import analyse
from simlab.compare.sweep import MAX_BATCH, STRIDE, Progress, run_sweep, seed_of
from simlab.errors import SimlabError
from simlab.persona.schema import Persona
from simlab.replay import check_path, model_replies, replay_branch
from simlab.session.store import SessionStore
from simlab.turns import sample_replies, start_session

PERSONA = Persona(
    name="duo",
    frame="Two people talk.\n\n",
    user="Ann",
    model="Bo",
    sampling={"max_tokens": 30, "temperature": 0.9},
)


@pytest.fixture
def session(store, fake_engine):
    with start_session(store, PERSONA, "duo") as s:
        parent = s.tree.cursor
        for k, turn in enumerate(["one", "two"]):
            user = s.add_child(parent, "user", turn, speaker="Ann", persona="duo")
            [reply] = sample_replies(fake_engine, s, user.id, PERSONA.sampling_params(seed=10 + k))
            parent = reply.id
        s.goto(parent)
        yield s


def test_a_deterministic_engine_reproduces_every_reply(session, fake_engine):
    path = session.tree.path(session.tree.cursor)
    checks = check_path(fake_engine, session, path)
    assert [c.reproduced for c in checks] == [True, True]
    edited = session.edit(path[-1].id, "changed")  # the user's text: listed, not counted as a difference
    [_, last] = check_path(fake_engine, session, session.tree.path(edited.id))
    assert not last.reproduced and last.not_replayable.startswith("edited by hand")


def test_replay_lists_a_continued_reply_and_checks_an_interrupted_one_over_its_stored_part(store):
    from simlab.turns import start_continuation, start_replies

    engine = FakeEngine().enqueue([" The whole reply is long.", " And more.", " The whole reply is long."])
    with start_session(store, PERSONA, "cut") as s:
        user = s.add_child(s.tree.cursor, "user", "talk", speaker="Ann", persona="duo")
        replies = start_replies(engine, s, user.id, PERSONA.sampling_params(seed=3))
        seen = []
        replies.decode(lambda delta: seen.append(delta) or len(seen) >= 9)  # Ctrl-C after 9 tokens
        [cut] = replies.save()
        assert cut.finish_reason == "interrupted" and cut.text == "The whol"
        more = start_continuation(engine, s, cut, PERSONA.sampling_params(seed=4))
        more.decode()
        [continued] = more.save(keep=lambda c: True)
        checks = check_path(engine, s, s.tree.path(cut.id))
        assert [(c.node.id, c.reproduced) for c in checks] == [(cut.id, True)]
        assert engine.prompts[-1].endswith("Ann: talk\nBo:")
        [listed] = check_path(engine, s, s.tree.path(continued.id))
        assert listed.not_replayable.startswith("extended with /continue")


def test_a_servers_reply_is_compared_without_the_labels_space():
    engine = FakeEngine(local=False).enqueue([" This is a bit.", " This is a bit."])
    store = SessionStore(Path(tempfile.mkdtemp()))
    with start_session(store, PERSONA, "srv") as s:
        user = s.add_child(s.tree.cursor, "user", "talk", speaker="Ann", persona="duo")
        [reply] = sample_replies(engine, s, user.id, PERSONA.sampling_params(seed=3))
        assert reply.text == "This is a bit." and not reply.token_ids
        [check] = check_path(engine, s, s.tree.path(reply.id))
        assert check.reproduced, check


def test_a_replay_with_overrides_forks_at_the_first_reply(session, fake_engine):
    path = session.tree.path(session.tree.cursor)
    added = replay_branch(fake_engine, session, path, {"temperature": 0.3})
    assert [(n.role, n.origin) for n in added] == [
        ("model", "replayed"),
        ("user", "replayed"),
        ("model", "replayed"),
    ]
    assert added[0].parent == path[1].id and [n.seed for n in model_replies(added)] == [10, 11]
    assert all(n.params["temperature"] == 0.3 for n in model_replies(added))
    assert session.tree.cursor == added[-1].id


def test_a_replay_under_another_persona_is_a_new_root_with_its_stops(session, fake_engine):
    other = Persona(name="qa", frame="Q and A.\n\n", user="Q", model="A", greeting="Ask.")
    added = replay_branch(fake_engine, session, session.tree.path(session.tree.cursor), {}, persona=other)
    root = session.tree.path(added[0].id)[0]
    assert root.text == "Q and A.\n\n" and len(session.tree.roots) == 2
    replies = model_replies(added)
    assert [n.speaker for n in added] == ["Q", "A", "Q", "A"] and replies[0].params["stop"] == [
        "\nQ:",
        "\nA:",
    ]
    assert fake_engine.prompts[-1] == "Q and A.\n\nA: Ask.\nQ: one\nA: reply 10\nQ: two\nA:"
    with pytest.raises(SimlabError, match="no turns to replay"):
        replay_branch(fake_engine, session, session.tree.path(root.id), {}, persona=other)


def spec(samples=3, turns=("hello", "and then?")):
    return build_spec(
        {
            "turns": list(turns),
            "samples": samples,
            "seed": 40,
            "sampling": {"max_tokens": 12},
            "variants": [
                "interview",
                {"persona": "interview", "name": "cold", "sampling": {"temperature": 0.2}},
            ],
        },
        "spec",
    )


def test_a_sweep_seeds_each_sample_and_a_rerun_samples_nothing(store, fake_engine):
    sweep = spec()
    with store.create("compare-x") as session:
        runs = run_sweep(sweep, session, lambda model: fake_engine)
        asked = len(fake_engine.prompts)
        assert asked == 2 * (1 + 3)  # per variant: one batch for turn 1, one prompt per sample for turn 2
        assert fake_engine.together == [3, 3]  # turn 2's three prompts decode together, per variant
        for run in runs:
            assert [[r.seed for r in sample] for sample in run.samples] == [
                [seed_of(sweep, 0, i), seed_of(sweep, 1, i)] for i in range(3)
            ]
            assert seed_of(sweep, 1, 2) == 40 + STRIDE + 2
        again = run_sweep(sweep, session, lambda model: fake_engine)
        assert len(fake_engine.prompts) == asked
        assert [[r.id for s in run.samples for r in s] for run in again] == [
            [r.id for s in run.samples for r in s] for run in runs
        ]
        analysis = analyse(sweep, runs, lambda model: fake_engine)
    assert analysis.variants[1].name == "cold" and analysis.variants[0].samples == 3
    assert any("need a local model" in note for note in analysis.notes)  # the fake cannot score


def test_later_turns_decode_in_batches_of_at_most_max_batch(store, fake_engine):
    sweep = spec(samples=MAX_BATCH + 3, turns=("hello", "and then?", "why?"))
    said = []
    progress = Progress(total=2 * 3 * (MAX_BATCH + 3), report=lambda p, what: said.append((p.done, what)))
    with store.create("compare-z") as session:
        runs = run_sweep(sweep, session, lambda model: fake_engine, progress)
    assert said[0] == (0, "all variants (now interview, turn 1)")  # named before it is sampled
    assert (MAX_BATCH + 3, "all variants (now interview, turn 2)") in said
    assert fake_engine.together == [MAX_BATCH, 3] * 2 * 2  # turns 2 and 3 of both variants
    for run in runs:
        assert len(run.samples) == MAX_BATCH + 3
        for i, sample in enumerate(run.samples):
            assert [r.seed for r in sample] == [seed_of(sweep, t, i) for t in range(3)]
            assert sample[2].text == f"reply {seed_of(sweep, 2, i)}"[:12]  # its own seed's script, cut at 12


def test_a_sweep_on_a_server_sends_a_request_per_sample(store):
    server = FakeEngine(local=False)
    sweep = spec(samples=4, turns=("hello",))
    with store.create("compare-y") as session:
        runs = run_sweep(sweep, session, lambda model: server)
    assert len(server.prompts) == 2 * 4 and all(len(run.samples) == 4 for run in runs)
    assert sorted(s[0].seed for s in runs[0].samples) == [40, 41, 42, 43]
    assert all(s[0].backend == {"kind": "fake", "base_url": "fake://server"} for s in runs[0].samples)
