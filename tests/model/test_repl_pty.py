"""The installed `simlab` command in a pseudo-terminal: type, stream, branch, quit, resume, Ctrl-C."""

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import pty_env

pexpect = pytest.importorskip("pexpect")

SIMLAB = Path(sys.executable).parent / "simlab"
NODE_LINE = re.compile(r"[0-9a-f]{8} .*")


@pytest.fixture(scope="module")
def long_tiny(tmp_path_factory):
    """The tiny GPT-2 with room for thousands of tokens, so a reply lasts long enough to interrupt."""
    from conftest import build_tiny_gpt2

    return build_tiny_gpt2(tmp_path_factory.mktemp("long-tiny"), n_positions=4200, with_eos=False)


def spawn(tmp_path, model, *extra):
    persona = tmp_path / "p.yaml"
    persona.write_text(
        'name: p\nframe: "A chat.\\n\\n"\nspeakers: {user: User, model: Bot}\n'
        "greeting: Hello.\nsampling: {max_tokens: 6}\n"
    )
    env = pty_env(tmp_path)
    args = ["chat", "--model", str(model), "--sessions-dir", str(tmp_path / "s"), *extra]
    if "--resume" not in extra:
        args += ["--persona", str(persona), "--session", "pty", "--seed", "1"]
    child = pexpect.spawn(str(SIMLAB), args, env=env, encoding="utf-8", timeout=60, dimensions=(50, 220))
    wait_for_prompt(child)
    return child


def wait_for_prompt(child) -> str:
    """Wait for a fresh prompt (each starts by enabling bracketed paste; redraws while typing do not)."""
    child.expect_exact("\x1b[?2004h")
    printed = child.before
    child.expect_exact("User:")
    return printed


def command(child, line: str) -> str:
    """Type a line, wait for the next prompt; returns what was printed in between."""
    child.sendline(line)
    return wait_for_prompt(child)


def tree_lines(output: str) -> list[str]:
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)
    return [m.group(0).rstrip() for m in NODE_LINE.finditer(plain)]


@pytest.mark.skipif(not SIMLAB.exists(), reason="the simlab command is not installed in this environment")
def test_type_stream_branch_quit_resume_and_interrupt(tmp_path, long_tiny):
    child = spawn(tmp_path, long_tiny)
    out = command(child, "hello")
    assert "Bot:" in out
    out = command(child, "/n 3")
    assert "[4/4] Bot:" in out and "3 alternatives saved" in out
    out = command(child, "/next")
    assert "[3/4]" in out
    before = tree_lines(command(child, "/tree"))
    assert len(before) == 7 and any(line.endswith("◀") for line in before)
    child.sendline("/quit")
    child.expect(r"resume with: \S*simlab chat --resume pty")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    child = spawn(tmp_path, long_tiny, "--resume", "pty")
    after = tree_lines(command(child, "/tree"))
    assert after == before  # the same tree, the same cursor
    command(child, "/set max_tokens 4000")
    command(child, "/set stop ~~never~~")  # with no end-of-text token either, only Ctrl-C ends this reply
    child.sendline("tell me everything")
    child.expect_exact("Bot:")
    child.expect(r"\S{20}")  # streaming has begun
    child.send("typed ahead")  # not echoed into the reply
    child.sendintr()
    child.sendintr()  # a second Ctrl-C while the reply is saved: ignored, never the end of the REPL
    child.expect_exact("(interrupted: the partial reply is saved)")
    streamed = child.before
    assert "^C" not in streamed and "typed ahead" not in streamed
    wait_for_prompt(child)
    child.sendcontrol("u")  # the typed-ahead keys wait at the prompt; clear them
    info = command(child, "/info")  # the REPL goes on
    assert "finish interrupted" in info
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "tell me everything" in (tmp_path / "home" / "history").read_text()  # input history, in the home
    records = [json.loads(x) for x in (tmp_path / "s" / "pty.jsonl").read_text().splitlines()]
    cut = [
        r["node"] for r in records if r["type"] == "node" and r["node"].get("finish_reason") == "interrupted"
    ]
    assert len(cut) == 1 and 0 < len(cut[0]["token_ids"]) < 4000 and cut[0]["text"]


def session_nodes(path: Path) -> list[dict]:
    return [r["node"] for r in map(json.loads, path.read_text().splitlines()) if r["type"] == "node"]


@pytest.mark.skipif(not SIMLAB.exists(), reason="the simlab command is not installed in this environment")
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
def test_a_signal_mid_reply_saves_the_partial_reply_and_exits(tmp_path, long_tiny, signal_name):
    import signal

    child = spawn(tmp_path, long_tiny, "--max-tokens", "4000")
    command(child, "/set stop ~~never~~")
    child.sendline("tell me everything")
    child.expect_exact("Bot:")
    child.expect(r"\S{20}")  # streaming has begun
    child.kill(getattr(signal, signal_name))
    child.expect(pexpect.EOF)
    child.close()
    assert child.signalstatus is None and child.exitstatus == 128 + getattr(signal, signal_name)
    assert "Traceback" not in child.before
    nodes = session_nodes(tmp_path / "s" / "pty.jsonl")
    [cut] = [n for n in nodes if n.get("finish_reason") == "interrupted"]
    assert 0 < len(cut["token_ids"]) < 4000 and cut["text"]
    assert any(n["text"] == "tell me everything" for n in nodes)


@pytest.mark.skipif(not SIMLAB.exists(), reason="the simlab command is not installed in this environment")
def test_sigterm_at_the_prompt_ends_cleanly(tmp_path, long_tiny):
    import signal

    child = spawn(tmp_path, long_tiny)
    command(child, "hello")
    child.kill(signal.SIGTERM)
    child.expect(r"resume with: \S*simlab chat --resume pty")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 128 + signal.SIGTERM
    assert [n["role"] for n in session_nodes(tmp_path / "s" / "pty.jsonl")] == [
        "frame",
        "model",
        "user",
        "model",
    ]


@pytest.mark.skipif(not SIMLAB.exists(), reason="the simlab command is not installed in this environment")
@pytest.mark.parametrize("where", ["prompt", "loom"])
def test_sigterm_in_a_full_screen_app_closes_it_and_ends_the_chat(tmp_path, long_tiny, where):
    """The prompt and the loom exit at their event loop's next turn (never a KeyboardInterrupt
    raised into asyncio), then the chat says how to resume and exits 128 + 15."""
    import signal

    child = spawn(tmp_path, long_tiny)
    if where == "loom":
        child.sendline("/loom")
        child.expect_exact("\x1b[?1049h")  # the alternate screen: the loom is drawn
        child.expect_exact("Hello.")
    for _ in range(3):  # repeated signals while it closes change nothing
        child.kill(signal.SIGTERM)
    child.expect(r"resume with: \S*simlab chat --resume pty")
    child.expect(pexpect.EOF)
    child.close()
    assert child.signalstatus is None and child.exitstatus == 128 + signal.SIGTERM
    assert "Traceback" not in child.before
    assert [n["role"] for n in session_nodes(tmp_path / "s" / "pty.jsonl")] == ["frame", "model"]


@pytest.mark.skipif(not SIMLAB.exists(), reason="the simlab command is not installed in this environment")
def test_a_model_that_cannot_load_ends_the_chat_at_once_and_leaves_no_session(tmp_path):
    """The model loads behind the prompt; when it cannot, the chat ends with its one line and exit
    2 without waiting for a message (which would have left a session with an unanswered turn)."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    args = ["chat", "--model", str(broken), "--sessions-dir", str(tmp_path / "s")]
    child = pexpect.spawn(str(SIMLAB), args, env=pty_env(tmp_path), encoding="utf-8", timeout=60)
    child.expect(pexpect.EOF)
    child.close()
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before)
    assert child.exitstatus == 2
    assert "simlab: " in plain and str(broken) in plain and "Traceback" not in plain
    assert not list((tmp_path / "s").glob("*.jsonl"))
