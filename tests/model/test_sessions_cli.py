"""Session commands, exports/imports (Loom round trip) and replay, on the tiny GPT-2."""

import json

import pytest
import yaml
from conftest import run_cli

from simlab.engine.params import SamplingParams
from simlab.session.formats import import_file, to_loom
from simlab.turns import sample_replies


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default sessions folder is ./sessions, the conftest's store


def chat(engine, store, name="chat", turns=2, n=2):
    """A session made the way the REPL makes one: a frame, user turns, sampled replies."""
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=12, stop=("\nUser:",), seed=31)
    with store.create(name) as s:
        parent = s.add_child(None, "frame", "A chat between a user and a bot.\n\n").id
        for k in range(turns):
            user = s.add_child(parent, "user", f"tell me thing {k}", speaker="User")
            replies = sample_replies(
                engine, s, user.id, params.with_overrides(seed=31 + 10 * k), n=n, speaker="Bot"
            )
            parent = replies[-1].id
        s.set_tag(replies[0].id, "bookmark")
        s.goto(parent)
    return store.open(name, read_only=True)


def test_list_show_tree_and_transcript(capsys, store, tiny_engine):
    session = chat(tiny_engine, store)
    code, out, _ = run_cli(capsys, "sessions", "list")
    assert code == 0 and "chat" in out and "7 nodes" in out
    code, out, _ = run_cli(capsys, "sessions", "show", "chat", "--tree")
    assert code == 0 and "[1/2]" in out and "[2/2]" in out and "★" in out and "◀" in out
    current = [line for line in out.splitlines() if line.lstrip("│├└─ ").startswith("» ")]
    assert len(current) == len(session.tree.path(session.tree.cursor))  # the path is marked
    code, out, _ = run_cli(capsys, "sessions", "show", "chat")
    assert "User: tell me thing 1" in out and session.tree.cursor[:8] in out


def test_export_markdown_yaml_loom(capsys, store, tiny_engine):
    session = chat(tiny_engine, store)
    _, md, _ = run_cli(capsys, "sessions", "export", "chat", "--format", "md")
    assert md.startswith("# chat") and "**User:** tell me thing 0" in md and "seed" in md
    _, text, _ = run_cli(capsys, "sessions", "export", "chat", "--format", "yaml")
    data = yaml.safe_load(text)
    assert data["simlab_session"] == 1 and len(data["nodes"]) == 7 and data["cursor"] == session.tree.cursor
    _, text, _ = run_cli(capsys, "sessions", "export", "chat", "--format", "loom")
    loom = json.loads(text)
    assert loom["root"]["text"].startswith("A chat") and loom["selected_node_id"] == session.tree.cursor
    first_user = loom["root"]["children"][0]
    assert first_user["text"] == "User: tell me thing 0\n" and first_user["parent_id"] == loom["root"]["id"]
    assert len(first_user["children"]) == 2 and first_user["children"][0]["meta"]["source"] == "AI"


def shape(tree, node_id=None):
    nodes = tree.children(node_id, include_hidden=True) if node_id else tree.roots
    return [(n.id, n.role, n.speaker, n.text, sorted(n.tags), n.hidden, shape(tree, n.id)) for n in nodes]


def test_loom_round_trip_keeps_text_structure_and_bookmarks(store, tiny_engine, tmp_path):
    session = chat(tiny_engine, store)
    path = tmp_path / "tree.json"
    path.write_text(json.dumps(to_loom(session)))
    back = import_file(store, path, "back")
    again = store.open("back", read_only=True)
    assert shape(again.tree) == shape(session.tree)
    assert again.tree.cursor == session.tree.cursor
    original = session.tree.get(session.tree.cursor)
    assert again.tree.get(original.id).token_ids == original.token_ids
    assert back.name == "back"


def test_a_plain_loom_file_imports_and_renders_its_document(store, tmp_path, capsys):
    loom = {
        "root": {
            "id": "r",
            "text": "Once upon a time",
            "children": [
                {
                    "id": "a",
                    "text": ", a fox",
                    "parent_id": "r",
                    "tags": ["bookmark"],
                    "meta": {"source": "AI", "creation_timestamp": 1700000000.0},
                    "children": [],
                },
                {
                    "id": "b",
                    "text": ", a crow",
                    "parent_id": "r",
                    "tags": ["archived"],
                    "meta": {"source": "AI"},
                    "children": [{"id": "c", "text": " sang.", "children": [], "meta": {"source": "prompt"}}],
                },
            ],
        },
        "canonical": ["a"],
        "selected_node_id": "c",
    }
    path = tmp_path / "story.json"
    path.write_text(json.dumps(loom))
    code, out, _ = run_cli(capsys, "sessions", "import", str(path))
    assert code == 0 and "imported 4 nodes as session 'story'" in out
    tree = store.open("story", read_only=True).tree
    assert tree.get("a").tags == {"bookmark", "canonical"} and tree.get("b").hidden
    from simlab.frame.render import render_path

    assert render_path(tree.path("c")) == "Once upon a time, a crow sang."


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json or yaml: [", "neither JSON nor YAML"),
        ('{"root": "text"}', "not a Loom tree"),
        ('{"root": {"text": 5}}', "Loom node at root is not an object with a text string"),
        ('{"root": {"text": "a", "children": {"x": 1}}}', "'children' must be a list"),
    ],
)
def test_bad_imports_are_one_line_and_exit_2(capsys, store, tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, _, err = run_cli(capsys, "sessions", "import", str(path))
    assert code == 2 and expected in err and err.count("\n") == 1
    assert not store.exists("bad")


def test_a_damaged_session_file_import_says_what_is_wrong_with_it(capsys, store, tmp_path):
    """A .jsonl is read as a session file, so its header's own problem is named (line 1)."""
    path = tmp_path / "s.jsonl"
    path.write_text('{"broken": \n{"type": "node", "id": "a"}\n')
    code, _, err = run_cli(capsys, "sessions", "import", str(path))
    assert code == 2 and "s.jsonl:1: not a simlab session file" in err and err.count("\n") == 1
    assert not store.exists("s")


def test_rm_and_unknown_session(capsys, store, tiny_engine):
    chat(tiny_engine, store, turns=1, n=1)
    assert run_cli(capsys, "sessions", "rm", "chat")[0] == 0
    code, _, err = run_cli(capsys, "sessions", "show", "chat")
    assert code == 2 and "no session 'chat'" in err
    code, _, err = run_cli(capsys, "sessions", "show", "../etc/passwd")
    assert code == 2 and "not allowed" in err


def test_replay_reproduces_every_reply_exactly(capsys, store, tiny_engine):
    session = chat(tiny_engine, store)  # replies record the model spec, which replay loads again
    code, out, err = run_cli(capsys, "replay", "chat")
    assert code == 0 and "reproduced 2/2 replies exactly" in out
    assert len(store.open("chat", read_only=True).tree.nodes) == len(session.tree.nodes)
    # no silent wait: the model's load and each reply are announced on stderr
    assert "loading the model to re-run the path's 2 sampled replies" in err
    assert "re-running replies: 1/2 replies" in err and "re-running replies: 2/2 replies" in err


def test_replay_shows_the_first_differing_token(capsys, store, tiny_engine):
    chat(tiny_engine, store)
    lines = (store.folder / "chat.jsonl").read_text().splitlines()
    for i, line in enumerate(lines):  # corrupt the third token of the first reply, as a bad cache would
        record = json.loads(line)
        if record.get("type") == "node" and record["node"]["role"] == "model":
            record["node"]["token_ids"][2] = (record["node"]["token_ids"][2] + 1) % 300
            lines[i] = json.dumps(record)
            break
    (store.folder / "chat.jsonl").write_text("\n".join(lines) + "\n")
    code, out, _ = run_cli(capsys, "replay", "chat", "--node", record["node"]["id"][:8])
    assert code == 1 and "differs at token 2" in out and "reproduced 0/1 replies exactly" in out


def test_replay_names_a_reply_whose_tokens_came_back_with_other_last_bits(capsys, store, tiny_engine):
    """The same tokens with log-probabilities that moved (float products sum otherwise on another
    CPU; a batch that changed a row's bits) still reproduce the reply's text, but not exactly: said."""
    chat(tiny_engine, store)
    lines = (store.folder / "chat.jsonl").read_text().splitlines()
    for i, line in enumerate(lines):
        record = json.loads(line)
        if record.get("type") == "node" and record["node"]["role"] == "model":
            record["node"]["logprobs"][3] += 2e-6
            lines[i] = json.dumps(record)
            break
    (store.folder / "chat.jsonl").write_text("\n".join(lines) + "\n")
    short = record["node"]["id"][:8]
    code, out, _ = run_cli(capsys, "replay", "chat", "--node", short)
    assert code == 0 and "the same tokens; log-probabilities moved by up to 2e-06" in out
    assert "reproduced 1/1 replies, 1 of them with moved log-probabilities (listed above)" in out


def test_replay_with_overrides_adds_a_branch_and_compare_shows_both(capsys, store, tiny_engine):
    session = chat(tiny_engine, store)
    before = set(session.tree.nodes)
    old_leaf = session.tree.cursor
    code, out, _ = run_cli(capsys, "replay", "chat", "--temperature", "1.5", "--seed", "999")
    assert code == 0 and "new branch of 3 node(s)" in out
    tree = store.open("chat", read_only=True).tree
    new = [tree.get(i) for i in set(tree.nodes) - before]
    assert sorted(n.role for n in new) == ["model", "model", "user"]
    assert all(n.origin == "replayed" for n in new)
    assert {n.params["temperature"] for n in new if n.role == "model"} == {1.5}
    assert {n.seed for n in new if n.role == "model"} == {999}
    first_reply = next(
        n
        for n in new
        if n.role == "model" and tree.get(n.parent).role == "user" and tree.get(n.parent).origin != "replayed"
    )
    assert tree.get(first_reply.parent).text == "tell me thing 0"
    code, out, _ = run_cli(capsys, "sessions", "show", "chat", "--compare", old_leaf[:8], tree.cursor[:8])
    assert code == 0 and "│" in out and "seed 999" in out and "shared: 2 node(s)" in out


def test_replay_with_a_bad_override_fails_before_loading(capsys, store, tiny_engine):
    chat(tiny_engine, store, turns=1, n=1)
    code, _, err = run_cli(capsys, "replay", "chat", "--top-p", "7")
    assert code == 2 and "top_p=7.0 is invalid" in err


def test_sessions_list_fits_the_terminal_and_counts_nodes_right(capsys, store, monkeypatch):
    import os

    from simlab.persona.schema import Persona
    from simlab.turns import start_session

    long = Persona(name="p", frame="What is the cleverest thing an octopus has ever done in your lab " * 3)
    session = start_session(store, long, "one")
    session.add_child(
        session.tree.cursor, "user", "What is the cleverest thing an octopus has ever done? " * 3
    )
    session.close()
    monkeypatch.setattr("shutil.get_terminal_size", lambda *a: os.terminal_size((80, 24)))
    code, out, _ = run_cli(capsys, "sessions", "list", "--sessions-dir", store.folder)
    [row] = out.splitlines()
    assert code == 0 and len(row) <= 80 and row.endswith("…") and "    2 nodes  What is" in row
