"""A disk that refuses writes: the REPL says it cannot save, keeps the conversation in memory,
exports it elsewhere, writes the backlog once the disk takes it again, and rescues it on exit.

A full disk is the real thing: the session's file descriptor is pointed at /dev/full, where every
write fails with ENOSPC. A folder the OS refuses is one under /sys (refused even to root)."""

import io
import json
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest

from simlab.cli.main import main
from simlab.errors import SessionWriteError, SimlabError
from simlab.persona.schema import Persona
from simlab.repl.app import toolbar_text
from simlab.repl.commands import handle
from simlab.repl.screen import LineView
from simlab.repl.state import Chat
from simlab.session.store import SessionStore

PERSONA = Persona(
    name="tiny",
    frame="A chat.\n\n",
    user="User",
    model="Bot",
    greeting="Hi.",
    sampling={"max_tokens": 4, "temperature": 1.0},
)
REFUSING = "/sys/simlab-cannot-write-here"


@contextmanager
def disk_full(session):
    """Every write to the session's file fails with ENOSPC until the block ends."""
    fd = session._handle.fileno()
    saved = os.dup(fd)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, fd)
    os.close(full)
    try:
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def test_a_store_write_on_a_full_disk_raises_and_keeps_the_change(tmp_path):
    store = SessionStore(tmp_path / "s")
    with store.create("x") as session:
        frame = session.add_child(None, "frame", "A chat.")
        with disk_full(session):
            with pytest.raises(SessionWriteError, match="No space left on device"):
                session.add_child(frame.id, "user", "lost?")
        assert len(session.tree.nodes) == 2 and len(session.unsaved) == 1
        session.add_child(frame.id, "user", "after")  # the backlog goes first
        assert not session.unsaved
    with store.open("x", read_only=True) as again:
        assert sorted(n.text for n in again.tree.nodes.values()) == ["A chat.", "after", "lost?"]


def test_the_repl_goes_on_in_memory_and_catches_up(tiny_engine, tmp_path, capsys):
    store = SessionStore(tmp_path / "s")
    out = io.StringIO()
    chat = Chat.new(tiny_engine, store, PERSONA, PERSONA.sampling_params(seed=1), LineView(out))
    on_disk_before = store.path(chat.session.name).read_bytes()
    with disk_full(chat.session):
        handle(chat, "first turn")
        handle(chat, "second turn")
        handle(chat, "/regen")
        assert out.getvalue().count("cannot save session") == 1  # said once, not per change
        assert "No space left on device" in out.getvalue() and "/export jsonl FILE" in out.getvalue()
        assert "NOT SAVED" in toolbar_text(chat)
        assert store.path(chat.session.name).read_bytes() == on_disk_before  # nothing torn on disk
        with pytest.raises(SimlabError, match="not on disk; /export jsonl FILE first"):
            handle(chat, "/load other")
        backup = tmp_path / "elsewhere" / "backup.jsonl"
        backup.parent.mkdir()
        handle(chat, f"/export jsonl {backup}")
        assert chat.session.safe_to_close  # everything is in the export now
        handle(chat, "third turn")
    assert main(["sessions", "import", str(backup), "--sessions-dir", str(tmp_path / "imported")]) == 0
    imported = SessionStore(tmp_path / "imported").open("backup", read_only=True)
    texts = {n.text for n in imported.tree.nodes.values()}
    assert {"first turn", "second turn"} <= texts and "third turn" not in texts
    handle(chat, "fourth turn")  # the disk takes writes again: the backlog is written first
    assert "is saved again" in out.getvalue() and not chat.session.unsaved
    assert "NOT SAVED" not in toolbar_text(chat)
    chat.session.close()
    reopened = store.open(chat.session.name, read_only=True)
    assert set(reopened.tree.nodes) == set(chat.tree.nodes)
    assert reopened.tree.cursor == chat.tree.cursor


def scripted_chat(tmp_path, tiny_dir, sessions, lines):
    env = {**os.environ, "SIMLAB_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    persona = tmp_path / "p.yaml"
    persona.write_text('name: p\nframe: "A chat.\\n\\n"\nspeakers: {user: User, model: Bot}\ngreeting: Hi.\n')
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "simlab",
            "chat",
            "--model",
            str(tiny_dir),
            "--sessions-dir",
            sessions,
            "--seed",
            "3",
            "--max-tokens",
            "4",
            "--persona",
            str(persona),
        ],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_a_folder_that_refuses_writes_chats_in_memory_and_rescues_on_exit(tmp_path, tiny_dir):
    assert not os.path.exists(REFUSING)
    done = scripted_chat(
        tmp_path, tiny_dir, REFUSING, ["hello", "how are you", f"/export md {tmp_path}/t.md"]
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "cannot take session" in done.stderr and "kept in memory" in done.stderr
    assert len(done.stdout.strip().splitlines()) >= 2  # both replies were printed
    assert "how are you" in (tmp_path / "t.md").read_text()  # export elsewhere worked
    rescue = next((tmp_path / "home" / "rescue").glob("*.jsonl"))
    assert f"the whole session is in {rescue}" in done.stderr
    records = [json.loads(line) for line in rescue.read_text().splitlines()]
    texts = [r["node"]["text"] for r in records if r["type"] == "node"]
    assert (
        "hello" in texts and "how are you" in texts and len(texts) == 6
    )  # frame, greeting, 2 turns, 2 replies


def test_a_session_folder_that_is_a_file_is_one_line_for_commands_that_only_read(tmp_path, capsys):
    folder = tmp_path / "sessions"
    folder.write_text("not a folder")
    assert main(["sessions", "show", "x", "--sessions-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
