"""`simlab personas ...` and `simlab replay --persona`, through the real CLI entry point."""

import json
import subprocess
import sys

from conftest import png_with_card, run_cli

from simlab.persona.library import find
from simlab.persona.schema import Persona, load_file
from simlab.session.store import SessionStore
from simlab.turns import sample_replies, start_session


def test_list_shows_shipped_and_user_personas(capsys, isolated_home):
    (isolated_home / "personas").mkdir(parents=True)
    (isolated_home / "personas" / "broken.yaml").write_text("name: broken\nframe: [\n")
    code, out, _ = run_cli(capsys, "personas", "list")
    assert code == 0 and "interview" in out and "shipped" in out
    assert "broken" in out and "INVALID" in out and "invalid YAML" in out
    code, out, _ = run_cli(capsys, "personas", "list", "--json")
    assert {r["name"] for r in json.loads(out)} >= {"interview", "irc-log", "broken"}


def test_a_long_description_is_cut_with_an_ellipsis(capsys, isolated_home):
    (isolated_home / "personas").mkdir(parents=True)
    long = "A keeper who " + "talks at length about lamps and weather " * 4
    (isolated_home / "personas" / "wordy.yaml").write_text(
        f'name: wordy\ndescription: "{long}"\nframe: "A log.\\n\\n"\nspeakers: {{user: A, model: B}}\n'
    )
    code, out, _ = run_cli(capsys, "personas", "list")
    [line] = [ln for ln in out.splitlines() if ln.startswith("wordy")]
    assert code == 0 and line.endswith("…") and line.split("  ")[-1][:-1] in long


def test_validate_reports_each_bad_file_and_exits_2(capsys, tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("frame: hello\n")
    bad.write_text("frame: hello\nspeakers:\n  user: A\n  modle: B\n")
    code, out, err = run_cli(capsys, "personas", "validate", str(good), str(bad))
    assert code == 2 and "ok  good" in out
    assert f"{bad}:4: speakers.modle: unknown speaker" in err and "1 of 2 persona file(s) invalid" in err
    code, out, _ = run_cli(capsys, "personas", "validate")
    assert code == 0 and out.count("ok  ") >= 10


def test_new_writes_a_template_that_validates_and_refuses_to_overwrite(capsys, isolated_home):
    code, out, _ = run_cli(capsys, "personas", "new", "mine")
    path = isolated_home / "personas" / "mine.yaml"
    assert code == 0 and str(path) in out and "# " in path.read_text()
    assert load_file(path).name == "mine"
    code, _, err = run_cli(capsys, "personas", "new", "mine")
    assert code == 2 and "exists" in err
    code, _, err = run_cli(capsys, "personas", "new", "../escape")
    assert code == 2 and "not a usable persona name" in err


def test_import_a_png_card_then_use_it(capsys, tmp_path, isolated_home):
    card = {
        "spec": "chara_card_v2",
        "data": {
            "name": "Vell",
            "description": "{{char}} flies.",
            "first_mes": "Ahoy.",
            "extensions": {"k": [1, 2]},
        },
    }
    (tmp_path / "vell.png").write_bytes(png_with_card(card))
    code, out, _ = run_cli(capsys, "personas", "import", str(tmp_path / "vell.png"))
    assert code == 0 and "imported tavern-v2 character as persona 'vell'" in out
    persona = find("vell")
    assert persona.extensions["k"] == [1, 2] and persona.render_frame() == "Vell flies.\n\n"
    code, _, err = run_cli(capsys, "personas", "import", str(tmp_path / "vell.png"))
    assert code == 2 and "--force" in err
    (tmp_path / "plain.png").write_bytes(png_with_card(card).replace(b"chara\0", b"xxxxx\0"))
    code, _, err = run_cli(capsys, "personas", "import", str(tmp_path / "plain.png"))
    assert code == 2 and err.count("\n") == 1 and "no character card" in err


def test_render_prints_the_exact_prompt(capsys):
    code, out, err = run_cli(capsys, "personas", "render", "interview", "--turn", "Why octopuses?")
    p = find("interview")
    assert code == 0
    assert (
        out
        == f"{p.render_frame()}Dr. Okafor: {p.greetings()[0]}\n\nInterviewer: Why octopuses?\n\nDr. Okafor:"
    )
    assert '"\\nInterviewer:"' in err


def test_show_and_unknown_names(capsys):
    code, out, _ = run_cli(capsys, "personas", "show", "stage-play")
    assert code == 0 and "name: stage-play" in out and "KEEPER" in out
    code, _, err = run_cli(capsys, "personas", "show", "nobody")
    assert code == 2 and "unknown persona 'nobody'" in err


def test_personas_commands_do_not_import_torch():
    code = (
        "import sys; from simlab.cli.main import main; main(['personas', 'list']); "
        "main(['personas', 'validate']); assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_replay_under_another_persona_is_a_new_root_branch(capsys, tmp_path, monkeypatch, tiny_engine):
    monkeypatch.chdir(tmp_path)
    store = SessionStore(tmp_path / "sessions")
    first = Persona(name="first", frame="A chat.\n\n", user="User", model="Bot", greeting="Hi.")
    with start_session(store, first, "s") as s:
        user = s.add_child(s.tree.cursor, "user", "hello", speaker="User")
        [reply] = sample_replies(
            tiny_engine, s, user.id, first.sampling_params(seed=5, max_new_tokens=6), speaker="Bot"
        )
        s.goto(reply.id)
    other = tmp_path / "other.yaml"
    other.write_text('name: other\nframe: "Q and A.\\n\\n"\nspeakers: {user: Q, model: A}\n')
    code, out, _ = run_cli(capsys, "replay", "s", "--persona", str(other))
    assert code == 0 and "new branch of 2 node(s)" in out
    tree = store.open("s", read_only=True).tree
    assert len(tree.roots) == 2
    new_path = tree.path(tree.cursor)
    assert [(n.role, n.speaker) for n in new_path] == [("frame", None), ("user", "Q"), ("model", "A")]
    assert new_path[0].text == "Q and A.\n\n" and new_path[1].text == "hello"  # no greeting carried over
    new_reply = new_path[2]
    assert (
        new_reply.seed == 5 and new_reply.persona == "other" and new_reply.params["stop"] == ["\nQ:", "\nA:"]
    )
    assert new_reply.params["max_new_tokens"] == reply.params["max_new_tokens"]
    code, _, err = run_cli(capsys, "replay", "s", "--persona", "missing-persona")
    assert code == 2 and "unknown persona 'missing-persona'" in err
