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
