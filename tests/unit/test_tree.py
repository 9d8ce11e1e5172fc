"""Tree operations (pure data)."""

import pytest

from simlab.errors import TreeError
from simlab.frame.render import render_path
from simlab.session.tree import Node, Tree


def small_tree():
    tree = Tree()
    frame = tree.add_child(None, "frame", "A transcript.\n\n")
    u1 = tree.add_child(frame.id, "user", "Hello?", speaker="User")
    a, b, c = (
        tree.add_child(u1.id, "model", text, speaker="Bot", origin="sampled")
        for text in ["Hi.", "Who's there?", "Go away."]
    )
    tree.goto(b.id)
    return tree, frame, u1, (a, b, c)


def test_path_and_transcript():
    tree, frame, u1, (a, b, c) = small_tree()
    assert [n.id for n in tree.path(b.id)] == [frame.id, u1.id, b.id]
    assert render_path(tree.path(b.id)) == "A transcript.\n\nUser: Hello?\nBot: Who's there?\n"


def test_edit_adds_a_sibling_and_keeps_the_original():
    tree, _, u1, (a, b, c) = small_tree()
    edited = tree.edit(b.id, "Who is it?")
    assert edited.parent == u1.id and edited.origin == "edited" and edited.edited_from == b.id
    assert tree.get(b.id).text == "Who's there?"
    assert [n.text for n in tree.children(u1.id)][-1] == "Who is it?"


def test_cursor_moves():
    tree, frame, u1, (a, b, c) = small_tree()
    assert tree.move("prev").id == a.id
    with pytest.raises(TreeError, match="no previous sibling"):
        tree.move("prev")
    assert tree.move("next").id == b.id and tree.move("next").id == c.id
    assert tree.move("parent").id == u1.id
    assert tree.move("child").id == c.id  # the latest reply
    tree.goto(frame.id)
    with pytest.raises(TreeError, match="already at the root"):
        tree.move("parent")


def test_hidden_nodes_are_skipped_and_recoverable():
    tree, _, u1, (a, b, c) = small_tree()
    tree.set_hidden(b.id)
    assert [n.id for n in tree.children(u1.id)] == [a.id, c.id]
    assert len(tree.children(u1.id, include_hidden=True)) == 3
    tree.set_hidden(b.id, False)
    assert [n.id for n in tree.children(u1.id)] == [a.id, b.id, c.id]


def test_tags_and_prefix_lookup():
    tree, _, _, (a, b, c) = small_tree()
    tree.set_tag(a.id, "bookmark")
    assert tree.get(a.id).tags == {"bookmark"}
    tree.set_tag(a.id, "bookmark", on=False)
    assert tree.get(a.id).tags == frozenset()
    assert tree.resolve(a.id[:8]).id == a.id
    with pytest.raises(TreeError, match="no node"):
        tree.resolve("zzzz")


def test_bad_nodes_are_refused():
    tree, frame, _, _ = small_tree()
    with pytest.raises(TreeError, match="role 'bot'"):
        Node(id="x", parent=None, role="bot", text="")
    with pytest.raises(TreeError, match="parent nope is not in the tree"):
        tree.add(Node(id="y", parent="nope", role="user", text=""))
    with pytest.raises(TreeError, match="already exists"):
        tree.add(Node(id=frame.id, parent=None, role="frame", text=""))


def test_record_round_trip_keeps_every_field():
    node = Node(
        id="n1",
        parent="p",
        role="model",
        text="hi",
        speaker="Bot",
        origin="sampled",
        token_ids=(1, 2),
        logprobs=(-0.5, -1.0),
        top=(((1, "h", -0.5),), ((2, "i", -1.0),)),
        params={"temperature": 0.8},
        seed=3,
        finish_reason="stop",
        model="embedded",
        model_revision="abc",
        persona="interview",
        tags=frozenset({"bookmark"}),
    )
    back = Node.from_record(node.to_record())
    assert back.to_record() == node.to_record()
    assert back.token_ids == node.token_ids and back.tags == node.tags and back.params == node.params
    assert [list(alt) for alts in back.top for alt in alts] == [[1, "h", -0.5], [2, "i", -1.0]]
