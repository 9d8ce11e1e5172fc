"""Steering in the chat: /steer and its knob, --steer on `chat`, each reply recording the vectors it
was steered with, and replay adding them again (or saying why it cannot)."""

import io

import numpy as np
import pytest
from conftest import run_cli

from simlab.errors import SteerError
from simlab.persona.schema import Persona
from simlab.repl.commands import handle
from simlab.repl.screen import LineView
from simlab.repl.state import Chat
from simlab.repl.views import toolbar_text
from simlab.replay import check_path, replay_branch
from simlab.steer import library
from simlab.steer.vector import SteerVector

PERSONA = Persona(name="tiny", frame="A chat.\n\n", user="User", model="Bot", sampling={"max_tokens": 8})


def put(name: str, seed: int = 0, scale: float = 6.0) -> SteerVector:
    rng = np.random.default_rng(seed)
    vector = SteerVector({1: (scale * rng.standard_normal(32)).astype(np.float32)}, {"name": name})
    vector.write(library.folder() / f"{name}.gguf")
    return vector


@pytest.fixture
def chat(tiny_engine, store):
    out = io.StringIO()
    return Chat.new(tiny_engine, store, PERSONA, PERSONA.sampling_params(seed=4), LineView(out))


def test_steer_puts_a_vector_on_each_reply_records_it_and_the_knob_turns_it(chat):
    vector = put("v")
    [plain] = chat.user_turn("hello there")
    handle(chat, "/steer v 3 @1")
    assert "steer v:3@1: replies from here are steered" in chat.view.out.getvalue()
    assert "steer v:3@1" in toolbar_text(chat, 200)
    [steered] = chat.regen()
    assert steered.seed == plain.seed + 1 and plain.steer is None
    assert steered.steer == {
        "terms": [{"vector": "v", "sha256": vector.digest, "strength": 3.0, "blocks": [1]}],
        "positions": "all",
    }
    handle(chat, "/steer +")
    assert [u.strength for u in chat.steer_uses] == [3.25] and "steer v:3.25@1" in toolbar_text(chat, 200)
    handle(chat, "/steer off")
    [after] = chat.regen()
    assert after.steer is None and not chat.steer_uses


def test_a_steered_reply_replays_exactly_and_differs_from_its_seed_unsteered(chat, tiny_engine):
    put("v")
    handle(chat, "/steer v:4")
    [steered] = chat.user_turn("hello there")
    [check] = check_path(tiny_engine, chat.session, chat.tree.path(steered.id))
    assert check.reproduced and check.moved == 0, check
    unsteered = chat.session.tree.get(steered.id)
    handle(chat, "/steer off")
    chat.session.goto(steered.parent)
    chat.seeds.next = steered.seed  # the same seed, no vector
    [plain] = chat.regen()
    assert plain.token_ids != unsteered.token_ids
    [again] = replay_branch(tiny_engine, chat.session, chat.tree.path(steered.id), {})
    assert again.token_ids == steered.token_ids and again.steer == steered.steer


def test_replay_refuses_a_vector_that_changed_under_its_name(chat, tiny_engine):
    put("v")
    handle(chat, "/steer v:4")
    [steered] = chat.user_turn("hello there")
    put("v", seed=1)  # another vector now called v
    with pytest.raises(SteerError, match="whose directions differ from the one now called 'v'"):
        check_path(tiny_engine, chat.session, chat.tree.path(steered.id))


def test_bad_steer_commands_are_one_line_each(chat):
    put("v")
    for line, wanted in (
        ("/steer nope", "no steering vector 'nope'"),
        ("/steer 2", "'2' has no vector before it"),
        ("/steer v@7", "has no direction for block 7"),
        ("/steer -", "no steering to turn"),
    ):
        try:
            handle(chat, line)
        except SteerError as exc:
            assert wanted in str(exc) and "\n" not in str(exc), line
        else:
            assert wanted in chat.view.out.getvalue(), line
    assert not chat.steer_uses


def test_chat_steer_flag_steers_a_piped_chat_and_replay_reproduces_it(
    capsys, monkeypatch, tiny_dir, tmp_path
):
    put("v")
    folder = ["--sessions-dir", tmp_path / "s"]
    (tmp_path / "p.yaml").write_text("name: p\nframe: A chat.\nspeakers: {user: Ann, model: Bo}\n")
    flags = ["--model", tiny_dir, "--persona", tmp_path / "p.yaml", "--max-tokens", "6", "--seed", "2"]
    flags += ["--session", "st", *folder]
    code, out, err = run_cli(
        capsys, "chat", "--steer", "v:3", *flags, stdin="hello\n", monkeypatch=monkeypatch
    )
    assert code == 0, err
    code, out, err = run_cli(capsys, "replay", "st", *folder)  # (the model the session records)
    assert code == 0 and "reproduced" in out + err, out + err
    # replay --steer: a new branch with every reply steered as given (off: unsteered)
    from simlab.session.store import SessionStore

    for steer, wanted in (("v:3", [{"v": 3.0}]), ("off", [None])):
        code, out, err = run_cli(capsys, "replay", "st", "--steer", steer, *folder)
        assert code == 0 and "new branch of" in out, out + err
        with SessionStore(tmp_path / "s").open("st", read_only=True) as session:
            new = session.tree.get(session.tree.cursor)
            steers = [{t["vector"]: t["strength"] for t in new.steer["terms"]} if new.steer else None]
            assert steers == wanted, steers
            [original] = [n for n in session.tree.children(new.parent) if n.origin != "replayed"]  # its twin
            assert (new.token_ids == original.token_ids) == (steer == "v:3")  # the same seed, steered alike
        code, out, err = run_cli(capsys, "replay", "st", "--node", new.id, *folder)
        assert code == 0 and "reproduced" in out + err, out + err
        code, out, _ = run_cli(capsys, "sessions", "show", "st", "--compare", original.id, new.id, *folder)
        assert code == 0 and "v:3@1)" in out  # each reply's steering beside its seed
    code, _, err = run_cli(capsys, "replay", "st", "--steer", "v:0,1", *folder)
    assert code == 2 and "one strength" in err and len(err.strip().splitlines()) == 1
    assert run_cli(capsys, "steer", "rm", "v")[0] == 0  # a recorded vector gone: said before any model loads
    code, _, err = run_cli(capsys, "replay", "st", "--node", original.id, *folder)  # (the steered reply)
    assert code == 2 and "which is not here" in err and "loading the model" not in err, err
    flags[-3] = "other"  # (a new session: st exists)
    code, _, err = run_cli(capsys, "chat", "--steer", "nope", *flags, stdin="hi\n", monkeypatch=monkeypatch)
    assert code == 2 and "no steering vector 'nope'" in err


def test_a_sweep_of_strengths_is_one_sibling_each_recorded_and_replayed(chat, tiny_engine):
    put("v")
    handle(chat, "/steer v 0,2,4")
    assert "steer v:0,2,4" in toolbar_text(chat, 200)
    with pytest.raises(SteerError, match="3 strengths are one a sibling; sample 3 siblings"):
        chat.user_turn("hello there")
    handle(chat, "/n 3")
    siblings = chat.tree.siblings(chat.cursor.id)
    strengths = [s.steer["terms"][0]["strength"] if s.steer else 0.0 for s in siblings]
    assert strengths == [0.0, 2.0, 4.0] and siblings[0].steer is None
    assert len({s.seed for s in siblings}) == 1  # the strengths on one seed: paired draws
    said = chat.view.out.getvalue()
    seed = siblings[0].seed
    assert f"(seed {seed}, v:2@1," in said and f"(seed {seed}, v:4@1," in said
    for sibling in siblings:
        [check] = check_path(tiny_engine, chat.session, chat.tree.path(sibling.id))
        assert check.reproduced and check.moved == 0, (sibling.steer, check)


def test_a_vector_that_does_not_fit_is_refused_before_the_turn_and_taken_off(chat):
    from simlab.steer.use import uses_of

    put("v")
    chat.steer_uses = uses_of(["v:2@7"])  # as --steer at start: the files read, the model not yet there
    count = len(chat.tree.nodes)
    with pytest.raises(SteerError, match="has no direction for block 7.*; steering is off now"):
        chat.user_turn("hello there")
    assert len(chat.tree.nodes) == count and chat.steer_uses == []  # nothing saved, nothing left on
    [reply] = chat.user_turn("hello there")
    assert reply.steer is None


def test_resume_puts_the_steering_back_on_and_says_so(capsys, monkeypatch, tiny_dir, tmp_path):
    put("v")
    (tmp_path / "p.yaml").write_text("name: p\nframe: A chat.\nspeakers: {user: Ann, model: Bo}\n")
    flags = ["--model", tiny_dir, "--persona", tmp_path / "p.yaml", "--max-tokens", "4"]
    flags += ["--sessions-dir", tmp_path / "s"]
    code, _, err = run_cli(
        capsys, "chat", "--steer", "v:3", *flags, "--session", "r", stdin="hi\n", monkeypatch=monkeypatch
    )
    assert code == 0, err
    code, _, err = run_cli(
        capsys, "chat", "--resume", "r", *flags[-2:], stdin="and then?\n", monkeypatch=monkeypatch
    )
    assert code == 0 and "steering goes on: v:3" in err, err
    from simlab.session.store import SessionStore

    session = SessionStore(tmp_path / "s").open("r", read_only=True)
    replies = [n for n in session.tree.nodes.values() if n.role == "model" and n.params]
    assert len(replies) == 2 and all(n.steer["terms"][0]["strength"] == 3.0 for n in replies)
    code, _, err = run_cli(
        capsys, "generate", "hi", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--steer", "v"
    )
    assert code == 2 and "vllm-lens" in err and "reach" not in err  # said before any server is asked


def test_a_personas_steer_steers_a_new_chat_and_its_compare_variant(capsys, monkeypatch, tiny_dir, tmp_path):
    from simlab.compare.spec import build_spec
    from simlab.errors import SpecError
    from simlab.session.store import SessionStore

    put("v")
    persona = tmp_path / "p.yaml"
    persona.write_text("name: p\nframe: A chat.\nspeakers: {user: Ann, model: Bo}\nsteer: v:3\n")
    folder = ["--sessions-dir", tmp_path / "s"]
    flags = ["--model", tiny_dir, "--persona", persona, "--max-tokens", "6", "--seed", "2", *folder]
    code, out, err = run_cli(
        capsys, "chat", *flags, "--session", "ps", stdin="hello\n", monkeypatch=monkeypatch
    )
    assert code == 0 and "steering goes on: v:3 (p's; /steer off stops it)" in out + err, out + err
    with SessionStore(tmp_path / "s").open("ps", read_only=True) as session:
        reply = session.tree.get(session.tree.cursor)
        assert reply.role == "model" and reply.steer["terms"][0]["strength"] == 3.0
    code, out, err = run_cli(capsys, "chat", *flags, "--session", "pf", "--steer", "v:1", stdin="hi\n",
                             monkeypatch=monkeypatch)  # fmt: skip
    with SessionStore(tmp_path / "s").open("pf", read_only=True) as session:  # --steer replaces it
        assert session.tree.get(session.tree.cursor).steer["terms"][0]["strength"] == 1.0
    spec = build_spec({"turns": ["hi"], "variants": [{"persona": str(persona)}]}, "spec")
    assert [u.label() for u in spec.variants[0].steer] == ["v:3"]
    persona.write_text("name: q\nframe: A chat.\nsteer: nope:1\n")
    with pytest.raises(SpecError, match="q's steer: no steering vector 'nope'"):
        build_spec({"turns": ["hi"], "variants": [{"persona": str(persona)}]}, "spec")
