"""`simlab personas ...` and `simlab replay --persona`, through the real CLI entry point."""

import json
import subprocess
import sys

import pytest

from simlab.cli import main
from simlab.conversation import sample_replies, start_session
from simlab.persona import Persona, find, load_file
from simlab.persona_import import png_with_card
from simlab.store import SessionStore


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_shipped_and_user_personas(capsys, isolated_home):
    (isolated_home / "personas").mkdir(parents=True)
    (isolated_home / "personas" / "broken.yaml").write_text("name: broken\nframe: [\n")
    code, out, _ = run(capsys, "personas", "list")
    assert code == 0 and "interview" in out and "shipped" in out
    assert "broken" in out and "INVALID" in out and "invalid YAML" in out
    code, out, _ = run(capsys, "personas", "list", "--json")
    assert {r["name"] for r in json.loads(out)} >= {"interview", "irc-log", "broken"}


def test_validate_reports_each_bad_file_and_exits_2(capsys, tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("frame: hello\n")
    bad.write_text("frame: hello\nspeakers:\n  user: A\n  modle: B\n")
    code, out, err = run(capsys, "personas", "validate", str(good), str(bad))
    assert code == 2 and "ok  good" in out
    assert f"{bad}:4: speakers.modle: unknown speaker" in err and "1 of 2 persona file(s) invalid" in err
    code, out, _ = run(capsys, "personas", "validate")
    assert code == 0 and out.count("ok  ") >= 10


def test_new_writes_a_template_that_validates_and_refuses_to_overwrite(capsys, isolated_home):
    code, out, _ = run(capsys, "personas", "new", "mine")
    path = isolated_home / "personas" / "mine.yaml"
    assert code == 0 and str(path) in out and "# " in path.read_text()
    assert load_file(path).name == "mine"
    code, _, err = run(capsys, "personas", "new", "mine")
    assert code == 2 and "exists" in err
    code, _, err = run(capsys, "personas", "new", "../escape")
    assert code == 2 and "not a usable persona name" in err


def test_import_a_png_card_then_use_it(capsys, tmp_path, isolated_home):
    card = {"spec": "chara_card_v2", "data": {"name": "Vell", "description": "{{char}} flies.",
                                              "first_mes": "Ahoy.", "extensions": {"k": [1, 2]}}}
    (tmp_path / "vell.png").write_bytes(png_with_card(card))
    code, out, _ = run(capsys, "personas", "import", str(tmp_path / "vell.png"))
    assert code == 0 and "imported tavern-v2 character as persona 'vell'" in out
    persona = find("vell")
    assert persona.extensions["k"] == [1, 2] and persona.render_frame() == "Vell flies.\n\n"
    code, _, err = run(capsys, "personas", "import", str(tmp_path / "vell.png"))
    assert code == 2 and "--force" in err
    (tmp_path / "plain.png").write_bytes(png_with_card(card).replace(b"chara\0", b"xxxxx\0"))
    code, _, err = run(capsys, "personas", "import", str(tmp_path / "plain.png"))
    assert code == 2 and err.count("\n") == 1 and "no character card" in err


def test_render_prints_the_exact_prompt(capsys):
    code, out, err = run(capsys, "personas", "render", "interview", "--turn", "Why octopuses?")
    p = find("interview")
    assert code == 0
    assert out == f"{p.render_frame()}Dr. Okafor: {p.greetings()[0]}\n\nInterviewer: Why octopuses?\n\nDr. Okafor:"
    assert '"\\nInterviewer:"' in err


def test_show_and_unknown_names(capsys):
    code, out, _ = run(capsys, "personas", "show", "stage-play")
    assert code == 0 and "name: stage-play" in out and "KEEPER" in out
    code, _, err = run(capsys, "personas", "show", "nobody")
    assert code == 2 and "unknown persona 'nobody'" in err


def test_personas_commands_do_not_import_torch():
    code = ("import sys; from simlab.cli import main; main(['personas', 'list']); "
            "main(['personas', 'validate']); assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_replay_under_another_persona_is_a_new_root_branch(capsys, tmp_path, monkeypatch, tiny_engine):
    monkeypatch.chdir(tmp_path)
    store = SessionStore(tmp_path / "sessions")
    first = Persona(name="first", frame="A chat.\n\n", user="User", model="Bot", greeting="Hi.")
    with start_session(store, first, "s") as s:
        user = s.add_child(s.tree.cursor, "user", "hello", speaker="User")
        [reply] = sample_replies(tiny_engine, s, user.id, "Bot", first.sampling_params(seed=5, max_new_tokens=6))
        s.goto(reply.id)
    other = tmp_path / "other.yaml"
    other.write_text("name: other\nframe: \"Q and A.\\n\\n\"\nspeakers: {user: Q, model: A}\n")
    code, out, _ = run(capsys, "replay", "s", "--persona", str(other))
    assert code == 0 and "new branch of 2 node(s)" in out
    tree = store.open("s", read_only=True).tree
    assert len(tree.roots) == 2
    new_path = tree.path(tree.cursor)
    assert [(n.role, n.speaker) for n in new_path] == [("frame", None), ("user", "Q"), ("model", "A")]
    assert new_path[0].text == "Q and A.\n\n" and new_path[1].text == "hello"  # no greeting carried over
    new_reply = new_path[2]
    assert new_reply.seed == 5 and new_reply.persona == "other" and new_reply.params["stop"] == ["\nQ:", "\nA:"]
    assert new_reply.params["max_new_tokens"] == reply.params["max_new_tokens"]
    code, _, err = run(capsys, "replay", "s", "--persona", "missing-persona")
    assert code == 2 and "unknown persona 'missing-persona'" in err


@pytest.mark.slow
def test_a_shipped_persona_samples_a_reply_that_ends_at_its_stop_string(tmp_path, embedded_engine):
    persona = find("interview")
    store = SessionStore(tmp_path / "sessions")
    with start_session(store, persona, "real") as s:
        user = s.add_child(s.tree.cursor, "user", persona.sample_turn, speaker=persona.user)
        replies = sample_replies(embedded_engine, s, user.id, persona.model, persona.sampling_params(seed=1), n=2)
    stopped = [r for r in replies if r.finish_reason == "stop"]
    assert stopped, [r.finish_reason for r in replies]
    text = embedded_engine.tokenizer.decode(list(stopped[0].token_ids))
    assert any(stop in text for stop in persona.stop_strings)  # the stop string's tokens end the reply
    assert stopped[0].text and not stopped[0].text.startswith(" ") and "Interviewer:" not in stopped[0].text
