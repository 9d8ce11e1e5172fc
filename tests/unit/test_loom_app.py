"""`simlab loom`'s full-screen app through prompt-toolkit's pipe input at 80x24, on the scripted
FakeEngine: each key's effect is checked in the session file, and reopening restores tree and cursor."""

import io
import json
import time

from conftest import IDLE, drive
from prompt_toolkit.input import create_pipe_input

from simlab.persona.schema import Persona
from simlab.repl.loom import Loom
from simlab.repl.screen import LineView
from simlab.repl.state import Chat
from simlab.turns import start_session

DOCUMENT = Persona(
    name="document", frame="The lighthouse stood", mode="document", sampling={"max_tokens": 40}
)


def records(store, name):
    return [json.loads(line) for line in store.path(name).read_text().splitlines()]


def idle(loom):
    return IDLE


def test_generate_pick_edit_mark_hide_quit_and_reopen(fake_engine, store):
    session = start_session(store, DOCUMENT, "doc")
    chat = Chat(
        fake_engine, store, session, DOCUMENT, DOCUMENT.sampling_params(seed=5), LineView(io.StringIO())
    )
    loom = Loom(chat, children=3)
    fake_engine.enqueue([" tall", " on a rock", " alone"])
    screen = drive(
        loom, ["g", idle(loom), "j", "e", "\x1b[F", " and white", "\x13", "b", "*", "k", "!", "?", "q", "q"]
    )
    nodes = {r["node"]["id"]: r["node"] for r in records(store, "doc") if r["type"] == "node"}
    frame = next(n for n in nodes.values() if n["role"] == "frame")
    sampled = [n for n in nodes.values() if n.get("origin") == "sampled"]
    assert sorted((n["seed"], n["text"]) for n in sampled) == [(5, " tall"), (6, " on a rock"), (7, " alone")]
    assert all(n["parent"] == frame["id"] and "speaker" not in n for n in sampled)
    assert fake_engine.prompts == ["The lighthouse stood"]  # the document itself, no label
    [edited] = [n for n in nodes.values() if n.get("origin") == "edited"]
    assert edited["text"] == " on a rock and white" and nodes[edited["edited_from"]]["seed"] == 6
    marks = [(r["id"], r["tag"]) for r in records(store, "doc") if r["type"] == "tag"]
    assert marks == [(edited["id"], "bookmark"), (edited["id"], "canonical")]
    hidden = [r["id"] for r in records(store, "doc") if r["type"] == "hide"]
    assert len(hidden) == 1 and nodes[hidden[0]]["seed"] == 7  # k: the sibling before the edit (the last)
    assert "simlab loom keys" in screen  # the help overlay was drawn
    cursor = [r["id"] for r in records(store, "doc") if r["type"] == "cursor"][-1]
    session.close()

    reopened = store.open("doc")
    assert reopened.tree.cursor == cursor == frame["id"]  # hiding the node went to its parent
    assert reopened.tree.get(edited["id"]).tags == {"bookmark", "canonical"}
    reopened.close()


def test_write_split_merge_and_a_command(fake_engine, store):
    session = start_session(store, DOCUMENT, "doc")
    chat = Chat(
        fake_engine, store, session, DOCUMENT, DOCUMENT.sampling_params(seed=1), LineView(io.StringIO())
    )
    loom = Loom(chat, children=1)
    fake_engine.enqueue([" on the cliff"])
    steps = [
        "a",
        " at dusk",
        "\x13",
        "g",
        idle(loom),
        "t",
        "\x1b[C",
        "\x1b[C",
        "s",
        "h",
        "m",
        "/",
        "seed 40\r",
        idle(loom),
        "q",
    ]
    drive(loom, steps)
    tree = chat.tree
    path = [n.text for n in chat.path()]
    assert "".join(path) == "The lighthouse stood at dusk on the cliff"
    merged = chat.cursor  # split " on the cliff" before token 2, then merged back into one node
    assert merged.text == " on the cliff" and merged.origin == "edited" and len(merged.token_ids) == 13
    split_parts = [n for n in tree.nodes.values() if n.origin == "edited" and n.id != merged.id]
    assert sorted(n.text for n in split_parts) == [" o", "n the cliff"]
    assert all(n.hidden for n in split_parts if n.text == " o")
    assert chat.seed == 40 and "seed" in loom.output


def test_loom_from_the_chat_repl_works_on_the_same_session_and_comes_back(fake_engine, store):
    from prompt_toolkit.output import DummyOutput

    from simlab.repl.app import run_interactive

    persona = Persona(name="duo", frame="Two talk.\n\n", user="Ann", model="Bo", sampling={"max_tokens": 20})
    chat = Chat(
        fake_engine,
        store,
        start_session(store, persona, "duo"),
        persona,
        persona.sampling_params(seed=2),
        LineView(io.StringIO()),
    )
    fake_engine.enqueue([" Fine."])
    with create_pipe_input() as keys:
        for text in ("hello\r", "/loom\r", "b", "q", "/quit\r"):
            keys.send_text(text)
        assert run_interactive(chat, resumed=False, input=keys, output=DummyOutput()) == 0
    [reply] = [n for n in chat.tree.nodes.values() if n.role == "model"]
    assert (reply.text, reply.speaker) == ("Fine.", "Bo")
    assert [n.text for n in chat.tree.nodes.values() if "bookmark" in n.tags] == ["Fine."]


def test_g_in_a_chat_samples_replies_to_a_turn_and_alternatives_beside_a_reply(fake_engine, store):
    persona = Persona(name="duo", frame="Two talk.\n\n", user="Ann", model="Bo", sampling={"max_tokens": 20})
    session = start_session(store, persona, "duo")
    chat = Chat(
        fake_engine, store, session, persona, persona.sampling_params(seed=2), LineView(io.StringIO())
    )
    loom = Loom(chat, children=2)
    loom.write_child("hello")
    user = chat.cursor
    assert (user.role, user.speaker) == ("user", "Ann")
    fake_engine.enqueue([" One.\nAnn: x", " Two.", " Three."])
    loom.generate()
    loom.wait()
    assert [n.text for n in chat.tree.children(user.id)] == ["One.", "Two."]  # stop strings still end a turn
    assert fake_engine.prompts[-1] == "Two talk.\n\nAnn: hello\nBo:"
    loom.children = 1
    loom.generate()
    loom.wait()
    assert [n.text for n in chat.tree.children(user.id)] == ["One.", "Two.", "Three."]
    assert loom.message.startswith("1 saved") and chat.cursor.text == "Three."
    loom.children = 2
    fake_engine.enqueue([" Same.", " Same."])
    loom.generate()
    loom.wait()
    assert "the 2 new replies are one reply repeated" in loom.message  # (said, not silently two)


def test_the_text_wraps_between_words_and_marks_where_the_window_scrolls_to():
    from simlab.repl.loom_app import word_wrap

    fragments = [
        ("class:before", "The keeper wrote in his log"),
        ("class:current", " that night: the wind rose"),
    ]
    wrapped = word_wrap(fragments, 12, "current")
    text = "".join(text for style, text in wrapped)
    assert text.split("\n") == ["The keeper", "wrote in his", "log that", "night: the", "wind rose"]
    marker = [style for style, _ in wrapped].index("[SetCursorPosition]")
    assert wrapped[marker + 1][0] == "class:current"
    assert (
        "".join(t for _, t in word_wrap([("", "a\nbb " + "x" * 30)], 10, "current")) == "a\nbb\n" + "x" * 30
    )
    at_end = word_wrap(fragments, 12, "current", end=True)  # the current node's last character
    marker = [style for style, _ in at_end].index("[SetCursorPosition]")
    assert "".join(t for _, t in at_end[marker + 1 :]) == "e"


def test_at_80x24_the_current_nodes_end_is_on_screen(fake_engine, store):
    """A long document and a long continuation: after g and moving to it, its last words are drawn
    (the pane used to scroll to the node's start, and its end stayed below, with no key to see it)."""
    text = " ".join(f"Sentence {i} of the keeper's long log, written in a steady hand." for i in range(12))
    document = Persona(name="document", frame=text, mode="document", sampling={"max_tokens": 2000})
    session = start_session(store, document, "long")
    chat = Chat(
        fake_engine, store, session, document, document.sampling_params(seed=5), LineView(io.StringIO())
    )
    loom = Loom(chat, children=1)
    fake_engine.enqueue([" " + " ".join(f"word{i}" for i in range(120)) + " LASTWORD"])
    screen = drive(loom, ["g", idle(loom), "q"])
    assert chat.cursor.text.endswith("LASTWORD")
    assert "LASTWORD" in screen and "Sentence 0 of" in screen  # (the start, drawn before g)


def test_leaving_hidden_nodes_out_moves_a_cursor_on_one_to_where_it_hangs(fake_engine, store):
    session = start_session(store, DOCUMENT, "doc")
    chat = Chat(
        fake_engine, store, session, DOCUMENT, DOCUMENT.sampling_params(seed=5), LineView(io.StringIO())
    )
    loom = Loom(chat)
    loom.write_child(" one")
    first = chat.cursor
    loom.write_child(" two")
    second = chat.cursor
    loom.show_hidden = True
    chat.session.set_hidden(first.id)
    loom.leave_hidden()
    assert chat.cursor.id == second.id  # hidden nodes shown: it stays, under the hidden one
    loom.show_hidden = False
    loom.leave_hidden()
    assert chat.cursor.id == first.parent


def test_with_hidden_nodes_shown_siblings_and_children_include_them(fake_engine, store):
    session = start_session(store, DOCUMENT, "doc")
    chat = Chat(
        fake_engine, store, session, DOCUMENT, DOCUMENT.sampling_params(seed=5), LineView(io.StringIO())
    )
    loom = Loom(chat)
    texts = []
    for text in (" a", " b", " c"):
        loom.goto(chat.path()[0].id)
        loom.write_child(text)
        texts.append(chat.cursor)
    chat.session.set_hidden(texts[1].id)
    loom.move("prev")
    assert chat.cursor.id == texts[0].id  # hidden nodes left out: " b" is skipped
    loom.show_hidden = True
    loom.move("next")
    assert chat.cursor.id == texts[1].id and [s for _, s in loom.sibling_lines()][1].startswith("2.  b")
    loom.move("next")
    assert chat.cursor.id == texts[2].id
    loom.move("next")
    assert loom.message == "no next sibling"
    from simlab.repl.loom_app import STYLE

    assert "hidden" not in STYLE  # prompt-toolkit conceals a class named so; hidden nodes are dimmed


def test_a_read_only_session_is_browsed_and_g_says_why_it_samples_nothing(fake_engine, store):
    session = start_session(store, DOCUMENT, "doc")
    session.close()
    before = store.path("doc").read_bytes()
    held = store.open("doc")  # another simlab writes it
    viewer = store.open("doc", read_only=True)
    chat = Chat(
        fake_engine, store, viewer, DOCUMENT, DOCUMENT.sampling_params(seed=5), LineView(io.StringIO())
    )
    loom = Loom(chat, children=3)
    fake_engine.enqueue([" tall"])
    screen = drive(loom, ["g", idle(loom), "b", "*", "!", "a", "more", "\x13", "e", "\x13", "q"])
    assert "open read-only: nothing is added" in screen and "Unhandled exception" not in screen
    assert fake_engine.prompts == []  # refused before sampling
    assert not loom.chat.session.unsaved and "open read-only" in loom.message  # each key: one line
    assert "read-only" in screen.split("? help")[0][-200:]  # the status line says so
    held.close()
    assert store.path("doc").read_bytes() == before


def test_splitting_a_chat_reply_keeps_it_one_turn_in_the_transcript_and_the_chat(fake_engine, store):
    from simlab.frame.render import render_path, reply_prompt

    chat_persona = Persona(name="duo", frame="Two people talk.\n\n", user="Ann", model="Dr. Okafor")
    session = start_session(store, chat_persona, "chat")
    out = io.StringIO()
    chat = Chat(
        fake_engine, store, session, chat_persona, chat_persona.sampling_params(seed=1), LineView(out)
    )
    fake_engine.enqueue([" Yes. It was buried in the limestone underground."])
    [reply] = chat.user_turn("Was it found?")
    before = render_path(chat.path())
    loom = Loom(chat, children=1)
    drive(loom, ["t", *["\x1b[C"] * 5, "s", "q"])
    first, rest = chat.path()[-2:]
    assert first.text + rest.text == reply.text and rest.parent == first.id  # split in two nodes
    assert render_path(chat.path()) == before  # ... of one turn: no second label, no doubled space
    assert reply_prompt(chat.path(), "Ann").endswith("Dr. Okafor: " + reply.text + "\nAnn:")
    assert first.finish_reason is None and rest.finish_reason == reply.finish_reason
    out.seek(0)
    out.truncate()
    chat.view.path(last=1)
    assert out.getvalue() == f"Dr. Okafor: {reply.text} [{reply.finish_reason}]\n"
    # a Loom file holds a text per node, joined along a path: the split turn reads as one turn there too
    from simlab.session.html import page_data
    from simlab.session.loom import to_loom

    by_id, stack = {}, [to_loom(chat.tree)["root"]]
    while stack:
        entry = stack.pop()
        by_id[entry["id"]] = entry
        stack.extend(entry.get("children", []))
    assert "".join(by_id[n.id]["text"] for n in chat.path()) == before
    page = {n["id"]: n for n in page_data(session)["nodes"]}
    shown = (page[n.id]["before"] + page[n.id]["text"] + page[n.id]["after"] for n in chat.path())
    assert "".join(shown) == before


def test_stage_play_turns_read_as_the_chat_writes_them_in_the_tree_and_sessions_show(fake_engine, store):
    from simlab.persona.library import find
    from simlab.session.views import Style, render_transcript, render_tree

    play = find("stage-play")
    session = start_session(store, play, "play")
    chat = Chat(fake_engine, store, session, play, play.sampling_params(seed=1), LineView(io.StringIO()))
    fake_engine.enqueue([" The sea took him."])
    chat.user_turn("Where is the keeper?")
    label = play.framing().head("model", play.model).strip()
    assert label.endswith(".")  # KEEPER. (the template's), not KEEPER:
    loom = Loom(chat, children=1)
    listed = "".join(text for _, parts in loom._tree_lines() for _, text in parts)
    assert f"{label} The sea took him." in listed and f"{play.model}:" not in listed
    shown = "\n".join(render_transcript(chat.tree, chat.cursor.id, Style(color=False)))
    assert f"{label} The sea took him." in shown and f"{play.model}:" not in shown
    tree = render_tree(chat.tree, Style(color=False), 120)
    assert any(f"{label} The sea took him." in line for line in tree)


def test_a_split_reply_reads_as_one_turn_in_sessions_show_markdown_and_the_trees(fake_engine, store, capsys):
    from conftest import run_cli

    from simlab.session import shape
    from simlab.session.formats import to_markdown
    from simlab.session.views import Style, render_transcript, render_tree

    persona = Persona(name="duo", frame="Two people talk.\n\n", user="Ann", model="Dr. Okafor")
    session = start_session(store, persona, "split")
    chat = Chat(
        fake_engine, store, session, persona, persona.sampling_params(seed=1), LineView(io.StringIO())
    )
    fake_engine.enqueue([" I study octopus cognition."])
    [reply] = chat.user_turn("What do you do?")
    first, rest = shape.split(session, reply.id, len("I study octopus"))
    session.goto(rest.id)
    assert "**Dr. Okafor:** I study octopus cognition." in to_markdown(session)
    shown = render_transcript(session.tree, rest.id, Style(color=False))
    assert shown[-1].endswith("… cognition.") and shown[-2].endswith("Dr. Okafor: I study octopus")
    assert any(line.endswith("… cognition. ◀") for line in render_tree(session.tree, Style(color=False), 120))
    listed = "".join(text for _, parts in Loom(chat)._tree_lines() for _, text in parts)
    assert "… cognition." in listed and "Dr. Okafor:  cog" not in listed
    session.close()
    code, _, err = run_cli(capsys, "replay", "split", "--sessions-dir", str(store.folder))
    assert code == 2 and "edited, split or continued" in err


# -- the view seam: the chat's actions speak through the face that is open --------------------------


def test_g_while_the_model_loads_says_so_in_the_editor_not_on_the_terminal_under_it(fake_engine, store):
    """The chat's notes once went to the line REPL's stderr, under the full-screen editor. The wait
    for a model still loading is said on the status line while it lasts (not left behind in the
    output pane), and nothing reaches the line REPL's streams."""
    from concurrent.futures import Future

    loading: Future = Future()
    line = io.StringIO()
    session = start_session(store, DOCUMENT, "doc")
    chat = Chat(loading, store, session, DOCUMENT, DOCUMENT.sampling_params(seed=5), LineView(line))
    loom = Loom(chat, children=1)
    fake_engine.enqueue([" tall"])
    assert loom.generate()
    deadline = time.monotonic() + 10
    while "still loading" not in (loom.busy or "") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loom.busy == "sampling 1 (the model is still loading; this goes on when it is ready)"
    loading.set_result(fake_engine)
    loom.wait()
    assert line.getvalue() == "" and "still loading" not in loom.output + loom.message
    assert loom.message.startswith("1 saved") and chat.cursor.text == " tall"
    loom.move("parent")
    assert loom.message == ""  # what g did is not said of another node
    loom.close()
    chat.view.note("after")  # the editor closed: the line REPL's view again
    assert line.getvalue() == "after\n"


def test_a_persona_replay_in_the_editor_counts_its_replies_on_the_status_line(fake_engine, store):
    """/persona from the editor: the replay's progress is the status line's (no progress bar drawn on
    the terminal under it); the replayed path is the text pane's, not repeated in the output pane."""
    persona = Persona(name="duo", frame="Two talk.\n\n", user="Ann", model="Bo", sampling={"max_tokens": 20})
    line = io.StringIO()
    session = start_session(store, persona, "duo")
    chat = Chat(fake_engine, store, session, persona, persona.sampling_params(seed=2), LineView(line))
    fake_engine.enqueue([" Hi.", " Well."])
    chat.user_turn("hello")
    chat.user_turn("and then?")
    line.truncate(0)
    loom = Loom(chat)
    busy = []
    loom.invalidate = lambda: busy.append(loom.busy)
    fake_engine.enqueue([" Aye.", " So."])
    assert loom.command("/persona stage-play")
    loom.wait()
    assert "replies under stage-play 0/2" in busy and "replies under stage-play 2/2" in busy
    assert "replaying 2 user turn(s) under stage-play" in loom.output
    assert "So." not in loom.output and "Two talk" not in loom.output  # the text pane shows the path
    assert line.getvalue() == "" and chat.cursor.text == "So." and loom.busy is None


def test_ctrl_c_in_the_editor_stops_the_reply_a_command_streams(fake_engine, store):
    """Both faces sample through Chat.reply, and Chat.interrupt stops whichever reply runs: a /regen
    typed in the editor stops mid-reply and what came is saved, as g's continuations are."""
    persona = Persona(name="duo", frame="Two talk.\n\n", user="Ann", model="Bo", sampling={"max_tokens": 200})
    session = start_session(store, persona, "duo")
    chat = Chat(
        fake_engine, store, session, persona, persona.sampling_params(seed=2), LineView(io.StringIO())
    )
    fake_engine.enqueue([" Hi."])
    chat.user_turn("hello")
    loom = Loom(chat)
    loom.invalidate = lambda: loom.streams and len(loom.streams[0]) >= 12 and loom.stop()
    fake_engine.enqueue([" " + "word " * 30])
    assert loom.command("/regen")
    loom.wait()
    reply = chat.cursor
    assert (
        reply.finish_reason == "interrupted" and reply.text.startswith("word word w") and len(reply.text) < 20
    )
    assert loom.message.startswith("stopped: 1 saved, all cut short")


def test_a_deep_node_keeps_room_for_its_text_in_the_tree_pane(fake_engine, store):
    """At 80 columns the tree pane is 26 wide: indentation stops where 14 columns stay for the text,
    so a turn ten levels down still shows what it says."""
    persona = Persona(name="duo", frame="Two talk.\n\n", user="Ann", model="Bo")
    session = start_session(store, persona, "deep")
    chat = Chat(
        fake_engine, store, session, persona, persona.sampling_params(seed=1), LineView(io.StringIO())
    )
    for k in range(6):
        fake_engine.enqueue([f" Answer number {k}."])
        chat.user_turn(f"Question {k}?")
    loom = Loom(chat)
    loom.width = 80
    *_, (node_id, fragments) = loom.tree_lines()
    indent = fragments[0][1]
    assert node_id == chat.cursor.id and len(indent) <= 12 and "Answer" in fragments[-1][1]
