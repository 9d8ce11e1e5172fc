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


def test_a_session_another_process_writes_opens_read_only_as_the_lock_message_says(chat, tmp_path):
    code, _, err = chat("hello\n/quit\n", "--session", "held")
    assert code == 0, err
    store = SessionStore(tmp_path / "s")
    path = store.path("held")
    before = path.read_bytes()
    with store.open("held"):  # another simlab writes it
        code, _, err = chat("/quit\n", "--resume", "held")
        assert code == 2 and "--read-only" in err
        offered = err.split("`")[1]  # the command the message offers
        assert offered == "simlab chat --resume held --read-only"
        export = tmp_path / "held.jsonl"
        script = f"/tokens\n/tree\n/export jsonl {export}\nanother turn\n/regen\n/quit\n"
        code, out, err = chat(script, "--resume", "held", "--read-only")
    assert "is open read-only: browse it, /tokens, /export; nothing is written to it" in out + err
    assert "Bo:" in out and export.exists()  # browsed and exported
    assert err.count("is open read-only: nothing is added to it") == 2  # the turn and /regen refused
    assert code == 2 and path.read_bytes() == before  # and nothing written


def test_read_only_needs_a_saved_session(chat):
    code, _, err = chat("/quit\n", "--read-only")
    assert code == 2 and "--read-only opens a saved session: add --resume NAME" in err
