"""Loom trees as pyloom (socketteer/loom) writes them, built here to its rules: its timestamps, the
shapes it opens, old-style attributes, everything it keeps that simlab does not use, its tag table;
import -> export gives the file back."""

import copy
import json

import pytest
from conftest import run_cli

from simlab.session.formats import import_file, render, to_markdown
from simlab.session.loom import DEFAULT_TAGS, parse_time
from simlab.session.store import SessionStore


def pyloom_node(node_id, text, parent=None, source="AI", when="2021-09-15-13.02.19", children=(), **extra):
    """A node the way pyloom's new_node / generate write it (and save it, with parent_id)."""
    node = {
        "id": node_id,
        "text": text,
        "children": list(children),
        "mutable": True,
        "open": False,
        "visited": True,
        "tags": [],
        "meta": {"creation_timestamp": when, "source": source, "modified": False},
        **extra,
    }
    if parent is not None:
        node["parent_id"] = parent
    return node


def pyloom_file():
    generation = {
        "model": "davinci-002",
        "logprobs": {
            "tokens": [" a", " fox", " ran"],
            "token_logprobs": [-0.5, -1.25, -2.0],
            "top_logprobs": [{" a": -0.5, " the": -1.1}, {" fox": -1.25, " crow": -1.5}, {" ran": -2.0}],
            "text_offset": [16, 18, 22],
        },
    }
    fox = pyloom_node(
        "8c1b6a1e-15f6-11ec-8d3d-0242ac130003",
        " a fox ran",
        parent="7a3b",
        chapter_id="ch-1",
        multimedia=[{"file": "img.png", "caption": "fox"}],
        text_attributes={"bold": [[0, 2]]},
        frame={"generation_settings": {"temperature": 0.7}},
        generation={"stop": "\n"},
    )
    fox["meta"]["generation"] = generation
    fox["tags"] = ["pinned", "bookmark"]
    crow = pyloom_node("9d2c", " a crow sang", parent="7a3b", source="mixed", when=1631710939.5)
    crow["tags"] = ["archived"]
    crow["meta"]["modified"] = True
    old = pyloom_node("af00", " and then", parent="9d2c", source="prompt", when="2021-09-15T13:05:00")
    del old["tags"]
    old["bookmark"] = True  # an old file's attribute, before tags
    crow["children"] = [old]
    root = pyloom_node("7a3b", "Once upon a time", source="prompt", children=[fox, crow], mutable=False)
    del root["meta"]["creation_timestamp"]  # older files have none
    return {
        "root": root,
        "chapters": {"ch-1": {"id": "ch-1", "root_id": "7a3b", "title": "Beginning"}},
        "tags": {
            **copy.deepcopy(DEFAULT_TAGS),
            "pinned": {"name": "pinned", "icon": "pin-red", "scope": "node"},
        },
        "generation_settings": {"num_continuations": 4, "temperature": 0.9, "model": "davinci-002"},
        "model_responses": {"r1": {"prompt": "Once", "response": {"choices": []}}},
        "preferences": {"font_size": 12},
        "canonical": ["8c1b6a1e-15f6-11ec-8d3d-0242ac130003"],
        "selected_node_id": "8c1b6a1e-15f6-11ec-8d3d-0242ac130003",
    }


def import_json(store, tmp_path, data, name="story", bom=False):
    path = tmp_path / f"{name}.json"
    text = json.dumps(data)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    import_file(store, path, name)
    return SessionStore(store.folder).open(name, read_only=True)


def test_a_pyloom_tree_comes_back_from_simlab_with_nothing_lost(store, tmp_path):
    original = pyloom_file()
    session = import_json(store, tmp_path, original)
    back = json.loads(render(session, "loom"))
    assert json.dumps(back) == json.dumps(original)  # the same keys, values and even key order


def test_a_sparse_loom_file_gets_nothing_it_did_not_have(store, tmp_path):
    sparse = {
        "root": {"id": "r", "children": [{"id": "c", "text": " one", "children": []}]},
        "canonical": ["c", "not-a-node"],
    }
    back = json.loads(render(import_json(store, tmp_path, sparse, "sparse"), "loom"))
    expected = copy.deepcopy(sparse)
    expected["root"]["children"][0]["parent_id"] = "r"  # documented additions: parent_id below the
    expected["tags"] = DEFAULT_TAGS  # root, pyloom's tag table, and the cursor
    expected["selected_node_id"] = "c"
    assert back == expected and list(back)[:2] == ["root", "canonical"]


def test_what_simlab_uses_from_a_pyloom_node(store, tmp_path):
    tree = import_json(store, tmp_path, pyloom_file()).tree
    fox = tree.get("8c1b6a1e-15f6-11ec-8d3d-0242ac130003")
    assert (
        fox.role == "model" and fox.tags == {"bookmark", "pinned", "canonical"} and fox.model == "davinci-002"
    )
    assert fox.logprobs == (-0.5, -1.25, -2.0) and tuple(fox.top[1][0][1:]) == (" fox", -1.25)
    assert fox.backend["tokens"] == [" a", " fox", " ran"]  # /tokens shows them as a server's reply
    crow, old = tree.get("9d2c"), tree.get("af00")
    assert crow.hidden and old.tags == {"bookmark"} and old.role == "user"
    assert tree.get("7a3b").created is None  # no timestamp: unknown, not the import time
    assert crow.created == 1631710939.5 and tree.cursor == fox.id


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2021-09-15-13.02.19", (2021, 9, 15, 13, 2, 19)),
        ("2021-09-15T13:02:19", (2021, 9, 15, 13, 2, 19)),
        (1631710939, None),
        ("not a time", "none"),
        (None, "none"),
        (True, "none"),
    ],
)
def test_timestamps_as_pyloom_and_others_write_them(value, expected):
    import time

    got = parse_time(value)
    if expected == "none":
        assert got is None
    elif expected is None:
        assert got == float(value)
    else:
        assert time.localtime(got)[:6] == expected


def test_the_other_shapes_pyloom_opens(store, tmp_path):
    simple = {
        "text": "Root text",
        "children": [{"text": " one", "children": []}, {"text": " two", "children": []}],
    }
    tree = import_json(store, tmp_path, simple, "simple").tree
    [root] = tree.roots
    assert root.text == "Root text" and [c.text for c in tree.children(root.id)] == [" one", " two"]
    bare = [
        {"text": "First", "children": [{"text": " more", "children": []}]},
        {"text": "Second", "children": []},
    ]
    tree = import_json(store, tmp_path, bare, "bare").tree
    assert [r.text for r in tree.roots] == ["First", "Second"]
    tree = import_json(store, tmp_path, pyloom_file(), "bom", bom=True).tree  # a BOM is still JSON
    assert len(tree.nodes) == 4


def test_a_bom_file_is_read_as_json_not_yaml(store, tmp_path, monkeypatch):
    from simlab import safe_yaml

    monkeypatch.setattr(safe_yaml, "compose_and_load", lambda *a: pytest.fail("parsed as YAML"))
    assert len(import_json(store, tmp_path, pyloom_file(), "bom", bom=True).tree.nodes) == 4


def test_a_loom_document_exports_to_markdown_as_one_flowing_text(store, tmp_path):
    session = import_json(store, tmp_path, pyloom_file())
    md = to_markdown(session)
    assert "Once upon a time a fox ran" in md and "**user:**" not in md and "**model:**" not in md


def test_export_of_a_simlab_session_gives_pyloom_its_tag_table(store, fake_engine):
    from simlab.persona.schema import Persona
    from simlab.turns import sample_replies, start_session

    persona = Persona(name="duo", frame="Two talk.\n\n", user="Ann", model="Bo")
    with start_session(store, persona, "native") as s:
        user = s.add_child(s.tree.cursor, "user", "hi", speaker="Ann")
        [reply] = sample_replies(fake_engine, s, user.id, persona.sampling_params(seed=1))
        s.set_hidden(reply.id)
        loom = json.loads(render(s, "loom"))
    assert loom["tags"]["archived"]["hide"] is True and loom["tags"]["bookmark"]["icon"] == "bookmark-black"
    flat = []

    def walk(node):
        flat.append(node)
        for child in node["children"]:
            walk(child)

    walk(loom["root"])
    [hidden] = [n for n in flat if n["id"] == reply.id]
    assert "archived" in hidden["tags"] and hidden["meta"]["creation_timestamp"].count(".") == 2


def test_ids_print_as_their_shortest_unique_prefix(store, tmp_path, capsys):
    children = [
        pyloom_node(f"00000000-0000-{i:04d}-aaaa-000000000000", f" {i}", parent="r") for i in range(12)
    ]
    data = {"root": pyloom_node("r", "Root", source="prompt", children=children)}
    import_json(store, tmp_path, data, "prefix")
    code, out, _ = run_cli(capsys, "sessions", "show", "prefix", "--tree", "--sessions-dir", store.folder)
    assert code == 0 and "00000000-0000-0011 " in out and "00000000 " not in out
    code, out, err = run_cli(
        capsys, "sessions", "show", "prefix", "--node", "00000000-0000-0011", "--sessions-dir", store.folder
    )
    assert code == 0 and " 11" in out, err


def test_a_selected_archived_node_leaves_the_cursor_where_it_can_be_seen(store, tmp_path):
    data = pyloom_file()
    data["selected_node_id"] = "af00"  # under the archived crow
    tree = import_json(store, tmp_path, data, "hiddencursor").tree
    assert tree.cursor == "7a3b" and not tree.get(tree.cursor).hidden


def test_resuming_an_imported_loom_session_does_not_load_its_api_model(store, tmp_path):
    import argparse

    from simlab.cli.chat import _model_spec
    from simlab.config import load_settings

    session = import_json(store, tmp_path, pyloom_file(), "resume")
    assert any(n.model == "davinci-002" for n in session.tree.nodes.values())
    settings = load_settings()
    assert _model_spec(argparse.Namespace(model=None), settings, session) == settings.model


def test_an_imported_loom_document_is_a_document_in_the_toolbar_not_a_session(store, tmp_path):
    from simlab.session.started import persona_of

    session = import_json(store, tmp_path, pyloom_file())
    persona = persona_of(session)
    assert persona.mode == "document" and persona.name == "document"
