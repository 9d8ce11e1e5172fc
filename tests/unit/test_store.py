"""Sessions on disk: append-only, fsynced, crash-safe, locked; damaged files lose nothing else."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from simlab.errors import SessionError
from simlab.session.store import SessionStore


def build(session, turns=3):
    frame = session.add_child(None, "frame", "A chat.\n")
    parent = frame.id
    ids = [frame.id]
    for k in range(turns):
        user = session.add_child(parent, "user", f"question {k}", speaker="User")
        reply = session.add_child(
            user.id,
            "model",
            f"answer {k}",
            speaker="Bot",
            origin="sampled",
            token_ids=(1, 2),
            logprobs=(-0.1, -0.2),
            seed=k,
        )
        ids += [user.id, reply.id]
        parent = reply.id
    return ids


def test_everything_written_is_there_after_reopening(store):
    with store.create("s1") as s:
        ids = build(s)
        s.set_tag(ids[2], "bookmark")
        s.set_hidden(ids[4])
        edited = s.edit(ids[3], "question 1, reworded")
        s.goto(ids[2])
    with store.open("s1") as again:
        tree = again.tree
        assert set(ids) | {edited.id} == set(tree.nodes)
        assert tree.get(ids[2]).tags == {"bookmark"} and tree.get(ids[4]).hidden
        assert tree.get(ids[3]).text == "question 1" and tree.get(edited.id).edited_from == ids[3]
        assert tree.cursor == ids[2] and again.problems == []


def test_records_are_on_disk_before_append_returns(store):
    s = store.create("s1")
    build(s, turns=1)
    lines = s.path.read_text().splitlines()  # read while still open: nothing buffered
    assert json.loads(lines[0])["type"] == "session" and len(lines) == 4
    s.close()


@pytest.mark.parametrize("bad", ["../evil", "/abs", "a/b", "", ".hidden", "nul\x00byte", "x" * 101, "a..b"])
def test_names_cannot_escape_the_folder(store, bad):
    with pytest.raises(SessionError, match="not allowed"):
        store.path(bad)


def test_a_second_writer_is_refused_but_a_reader_is_welcome(store):
    with store.create("s1") as s:
        build(s, 1)
        code = textwrap.dedent(f"""
            import sys
            from simlab.errors import SessionError
            from simlab.session.store import SessionStore
            store = SessionStore({str(store.folder)!r})
            try:
                store.open("s1")
            except SessionError as e:
                print("refused:", e)
            print("nodes:", len(store.open("s1", read_only=True).tree.nodes))
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
        assert "refused: session 's1' is open for writing in another simlab process" in out
        assert "nodes: 3" in out
    assert store.open("s1").tree.nodes  # free again once closed


def test_read_only_session_refuses_writes(store):
    store.create("s1").close()
    ro = store.open("s1", read_only=True)
    with pytest.raises(SessionError, match="read-only"):
        ro.add_child(None, "frame", "x")


def write_lines(store, name, lines):
    store.folder.mkdir(parents=True, exist_ok=True)
    path = store.path(name)
    path.write_text("".join(line + "\n" for line in lines[:-1]) + lines[-1])
    return path


def header(schema=1):
    return json.dumps({"type": "session", "schema": schema, "name": "x"})


def node_line(node_id, parent=None, role="user", text="t"):
    return json.dumps({"type": "node", "node": {"id": node_id, "parent": parent, "role": role, "text": text}})


def test_torn_last_line_is_reported_and_later_appends_survive(store):
    path = write_lines(
        store,
        "torn",
        [
            header(),
            node_line("a", role="frame"),
            node_line("b", "a"),
            '{"type": "node", "node": {"id": "c", "par',
        ],
    )
    before = path.read_bytes()
    with store.open("torn") as s:
        assert set(s.tree.nodes) == {"a", "b"}
        assert s.problems == [f"{path}:4: unreadable line skipped (a torn write or garbage)"]
        s.add_child("b", "model", "after the crash")
    assert path.read_bytes().startswith(before)  # never rewritten, only appended to
    with store.open("torn") as s:
        assert len(s.tree.nodes) == 3 and len(s.problems) == 1


def test_garbage_in_the_middle_loses_nothing_else(store):
    path = write_lines(
        store,
        "g",
        [
            header(),
            node_line("a", role="frame"),
            "\x00\x01garbage{{",
            node_line("b", "a"),
            "[1, 2]",
            node_line("c", "b"),
        ],
    )
    s = store.open("g", read_only=True)
    assert set(s.tree.nodes) == {"a", "b", "c"}
    assert [p.split(": ", 1)[0] for p in s.problems] == [f"{path}:3", f"{path}:5"]


def test_unknown_schema_version_is_refused_and_the_file_kept(store):
    path = write_lines(store, "new", [header(schema=99), node_line("a", role="frame")])
    before = path.read_bytes()
    with pytest.raises(SessionError, match="newer simlab \\(schema 99"):
        store.open("new")
    assert path.read_bytes() == before


def test_missing_parent_is_reported_and_the_node_kept(store):
    write_lines(store, "orphan", [header(), node_line("a", role="frame"), node_line("b", "ghost")])
    s = store.open("orphan", read_only=True)
    assert set(s.tree.nodes) == {"a", "b"} and "missing parent ghost" in s.problems[0]


def test_not_a_session_file(store):
    write_lines(store, "junk", ["hello world"])
    with pytest.raises(SessionError, match="not a simlab session file"):
        store.open("junk")


def test_a_damaged_header_is_named_by_its_own_line(store):
    """The error names line 1, not the first readable line after it."""
    with store.create("h") as s:
        build(s, 1)
    path = store.path("h")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(['{"broken": '] + lines[1:]) + "\n")
    with pytest.raises(SessionError, match=r"h\.jsonl:1: not a simlab session file \(its first line"):
        store.open("h")


def test_compaction_keeps_the_state_and_shrinks_the_file(store):
    with store.create("c") as s:
        ids = build(s, 2)
        for _ in range(50):
            s.goto(ids[1])
            s.goto(ids[-1])
        s.set_tag(ids[1], "canonical")
    saved = store.compact("c")
    assert saved > 0
    with store.open("c") as s:
        assert set(s.tree.nodes) == set(ids) and s.tree.get(ids[1]).tags == {"canonical"}
        assert s.tree.cursor == ids[-1]


def test_a_missing_session_names_the_folder_it_was_looked_for_in(tmp_path, monkeypatch):
    """A store made from a relative folder says where that is, and how to list it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SessionError) as raised:
        SessionStore(Path("my sessions")).open("nope")
    assert f"no session 'nope' in {tmp_path / 'my sessions'}" in str(raised.value)
    assert f"simlab sessions list --sessions-dir '{tmp_path / 'my sessions'}'" in str(raised.value)
    monkeypatch.setattr("sys.argv", [".venv/bin/simlab", "replay", "nope"])  # as the README runs it
    with pytest.raises(SessionError, match=r"see `\.venv/bin/simlab sessions list --sessions-dir"):
        SessionStore(Path("my sessions")).open("nope")


def test_remove(store):
    store.create("gone").close()
    store.remove("gone")
    assert not store.exists("gone")
    with pytest.raises(SessionError, match="no session 'gone'"):
        store.remove("gone")


def test_a_multiverse_is_one_record_beside_its_node_kept_by_compaction(store):
    from simlab.session import multiverse as sm

    saved = {
        "id": "m1",
        "node": "",
        "depth": 2,
        "cutoff": 0.1,
        "covered": [0.9, 0.5],
        "params": {"temperature": 0.8},
        "blocks": [[5, 0.6, " a", [[7, 0.5, " b", []]]], [6, 0.3, " c", []]],
    }
    with store.create("m") as s:
        ids = build(s, 1)
        saved["node"] = ids[1]
        s.save_multiverse(saved)
        s.add_child(ids[1], "user", "")  # (the file goes on after it)
    lines = store.path("m").read_text().splitlines()
    assert sum('"type":"multiverse"' in line for line in lines) == 1
    store.compact("m")
    with store.open("m") as s:
        [back] = s.tree.multiverses[ids[1]]
        assert back == saved and s.problems == []
    root = sm.tree(back)
    b = sm.find(root, (5, 7))
    assert b.p == pytest.approx(0.3) and b.text_from_root() == " a b" and sm.find(root, (6, 7)) is None
    # a zoom into " a" renormalises to it; the covered line speaks of the zoomed block
    zoom = sm.find(root, (5,))
    [line, covered] = sm.drawn(back, zoom)
    assert "50.0%" in line and '" b"' in line and covered.startswith("covers 50.0% at depth 2 of")
    # a damaged multiverse record is reported with its line and skipped; nothing else is lost
    with store.path("m").open("a") as f:
        f.write(json.dumps({"type": "multiverse", "multiverse": {**saved, "blocks": [[1, "x"]]}}) + "\n")
    with store.open("m", read_only=True) as s:
        assert len(s.tree.multiverses[ids[1]]) == 1 and len(s.tree.nodes) == 4
        assert "multiverse block" in s.problems[0] and ":" in s.problems[0]
