"""`simlab chat` as a command: which sessions it keeps at exit, and stop strings as typed."""

import json

import pytest
from conftest import run_cli

from simlab.session.store import SessionStore


@pytest.fixture
def chat(capsys, monkeypatch, tmp_path, tiny_dir):
    persona = tmp_path / "short.yaml"  # the tiny model reads 128 tokens: a frame that fits
    persona.write_text(
        'name: short\nframe: "A chat.\\n\\n"\ngreeting: Hello.\nspeakers: {user: Ann, model: Bo}\n'
    )

    def run(script: str, *flags):
        argv = ["chat", "--model", tiny_dir, "--sessions-dir", tmp_path / "s", "--max-tokens", "4", *flags]
        if "--resume" not in flags:
            argv += ["--persona", str(persona)]
        return run_cli(capsys, *argv, stdin=script, monkeypatch=monkeypatch)

    return run


def sessions(tmp_path) -> list[str]:
    return [s.name for s in SessionStore(tmp_path / "s").list()]


def test_a_session_holding_only_its_frame_is_not_left_behind(chat, tmp_path):
    code, _, err = chat("/tree\n/quit\n")
    assert code == 0 and sessions(tmp_path) == [], err


@pytest.mark.parametrize("script", ["/n 2\n/quit\n", "/bookmark\n/quit\n", "/edit Hello again.\n/quit\n"])
def test_anything_the_user_made_keeps_the_session_without_a_typed_turn(chat, tmp_path, script):
    code, _, err = chat(script)
    [name] = sessions(tmp_path)
    assert code == 0, err
    code, _, err = chat("/quit\n", "--resume", name)
    assert code == 0 and "no session" not in err and f"session {name} (resumed)" in err


def test_a_named_session_is_kept_even_when_empty(chat, tmp_path):
    code, _, _ = chat("/quit\n", "--session", "kept")
    assert code == 0 and sessions(tmp_path) == ["kept"]


def test_stop_strings_keep_non_ascii_characters(capsys, tiny_dir):
    code, out, err = run_cli(
        capsys,
        "generate",
        "Hi",
        "--model",
        tiny_dir,
        "--max-tokens",
        "3",
        "--json",
        "--stop",
        "\\nÉtienne:",
        "--stop",
        "naïve\\tcafé",
    )
    assert code == 0, err
    assert json.loads(out)["params"]["stop"] == ["\nÉtienne:", "naïve\tcafé"]


def test_set_and_seed_survive_a_resume_and_flags_still_win(chat, tmp_path):
    code, _, err = chat("/set temperature 0.3\n/set stop END|\\nÉtienne:\n/seed 50\nhi\nagain\n/quit\n")
    assert code == 0, err
    [name] = sessions(tmp_path)
    code, out, err = chat("/info\nonce more\n/quit\n", "--resume", name)
    assert code == 0, err
    assert "your settings go on: max_tokens=4, temperature=0.3, stop=('END', '\\nÉtienne:'), seed=52" in err
    assert "temperature 0.3" in out and "seed 52" in out
    store = SessionStore(tmp_path / "s")
    replies = [n for n in store.open(name, read_only=True).tree.nodes.values() if n.seed is not None]
    assert sorted(n.seed for n in replies) == [50, 51, 52]  # the counter goes on where it stopped
    last = max(replies, key=lambda n: n.seed)
    assert last.params["temperature"] == 0.3 and last.params["stop"] == ["END", "\nÉtienne:"]
    code, _, err = chat("again\n/quit\n", "--resume", name, "--temperature", "0.9", "--seed", "7")
    tree = store.open(name, read_only=True).tree
    newest = [n for n in tree.nodes.values() if n.seed == 7]
    assert code == 0 and len(newest) == 1 and newest[0].params["temperature"] == 0.9
    assert tree.settings["set"]["temperature"] == 0.9 and tree.settings["seed"] == 8


def test_a_session_with_unusable_settings_resumes_with_a_warning(chat, tmp_path):
    code, _, _ = chat("hi\n/quit\n")
    [name] = sessions(tmp_path)
    path = tmp_path / "s" / f"{name}.jsonl"
    with path.open("a") as handle:
        handle.write(
            json.dumps({"type": "settings", "settings": {"set": {"temperature": -4}, "seed": 1}}) + "\n"
        )
    code, _, err = chat("/quit\n", "--resume", name)
    assert code == 0 and "holds unusable settings" in err


def test_mode_chat_on_a_model_without_a_chat_template_fails_at_start_up(chat, tmp_path):
    code, out, err = chat("hello\n/quit\n", "--mode", "chat")
    assert code == 2 and out == ""
    assert (
        err.strip().splitlines()[-1].startswith("simlab: simlab chat: --mode chat needs a model with a chat")
    )
    assert "Traceback" not in err and sessions(tmp_path) == []
