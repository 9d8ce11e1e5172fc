"""The REPL's logic on the scripted FakeEngine, driven for real through prompt-toolkit's pipe input and
as a script: exact transcripts, and the rows it stores. No torch."""

import io
import re
import time
from pathlib import Path

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from simlab.errors import SimlabError
from simlab.persona.schema import Persona
from simlab.repl.app import run_interactive, run_script
from simlab.repl.commands import handle
from simlab.repl.screen import LineView
from simlab.repl.state import Chat
from simlab.repl.views import toolbar_text
from simlab.session.store import SessionStore

PERSONA = Persona(
    name="duo",
    frame="Two people talk.\n\n",
    user="Ann",
    model="Bo",
    greeting="Hi.",
    sampling={"max_tokens": 30, "temperature": 0.9},
)


def new_chat(engine, store, seed=7):
    out = io.StringIO()
    return Chat.new(engine, store, PERSONA, PERSONA.sampling_params(seed=seed), LineView(out))


def test_a_session_through_the_real_prompt_gives_this_exact_transcript(fake_engine, store):
    chat = new_chat(fake_engine.enqueue([" Fine.\nAnn:", " One", " Two", " Three", " Later."]), store)
    with create_pipe_input() as pipe:
        pipe.send_text("how are you\r/n 3\r/pick 3\r/bookmark\r/seed 100\rand later?\r/quit\r")
        assert run_interactive(chat, resumed=False, input=pipe, output=DummyOutput()) == 0
    out = chat.view.out.getvalue()
    waits = re.findall(r"simlab: sampling: (\d)/3 replies · [\d.]+ tok/s\n", out)
    assert waits == ["1", "2", "3"]  # a progress line per finished reply (a live bar on a terminal)
    out = re.sub(r"simlab: sampling: .*\n", "", out)
    transcript = out[out.index("Two people talk.") : out.index("saved: session")]
    assert transcript == (
        "Two people talk.\n"
        "Bo: Hi.\n"
        "Bo: Fine. [stop]\n"
        "[2/4] Bo: One (seed 8, eos)\n"
        "[3/4] Bo: Two (seed 9, eos)\n"
        "[4/4] Bo: Three (seed 10, eos)\n"
        "3 alternatives saved; at [2/4]. /pick I goes to sibling I, /next /prev step.\n"
        "Bo: Two [eos] [3/4]\n"
        f"bookmarked {chat.path()[3].id[:8]}\n"
        "seed = 100 (the next reply; then +1 per reply)\n"
        "Bo: Later. [eos]\n"
    )
    rows = [(n.role, n.text, n.seed, sorted(n.tags)) for n in chat.path()]
    assert rows == [
        ("frame", "Two people talk.\n\n", None, []),
        ("model", "Hi.", None, []),
        ("user", "how are you", None, []),
        ("model", "Two", 9, ["bookmark"]),
        ("user", "and later?", None, []),
        ("model", "Later.", 100, []),
    ]
    reloaded = SessionStore(store.folder).open(chat.session.name, read_only=True)
    assert reloaded.tree.cursor == chat.tree.cursor and len(reloaded.tree.nodes) == len(chat.tree.nodes)
    assert fake_engine.prompts[-1].endswith("Ann: how are you\nBo: Two\nAnn: and later?\nBo:")


def test_settings_seeds_and_stops_go_into_the_next_reply(fake_engine, store):
    chat = new_chat(fake_engine, store, seed=3)
    handle(chat, "/set temperature 0.4")
    handle(chat, "/set max_tokens 5")
    handle(chat, "/set stop END|\\n\\nÉtienne:")
    [reply] = chat.user_turn("go")
    assert reply.params["temperature"] == 0.4 and reply.params["max_new_tokens"] == 5
    assert reply.params["stop"] == ["END", "\n\nÉtienne:"] and reply.seed == 3
    assert reply.text == "reply" and reply.finish_reason == "length"  # "reply 3" cut at 5 tokens
    with pytest.raises(SimlabError, match="top_p=7.0 is invalid"):
        handle(chat, "/set top_p 7")
    with pytest.raises(SimlabError, match="unknown setting.*temperature.*p_threshold"):  # the grow ones too
        handle(chat, "/set warmth 3")
    handle(chat, "/set max_new_tokens 5")  # (a field's own name is taken too)
    handle(chat, "/set stop default")
    assert chat.params.stop == ("\nAnn:", "\nBo:")
    handle(chat, "/seed random")
    [other] = chat.user_turn("again")
    assert other.seed is not None and other.seed != 4 and other.text == "reply"


def test_regen_continue_edit_and_moves(fake_engine, store):
    chat = new_chat(fake_engine.enqueue([" A", " B", " and more"]), store)
    [first] = chat.user_turn("x")
    [second] = chat.regen()
    assert second.parent == first.parent and second.seed == first.seed + 1
    longer = chat.continue_reply()
    assert longer.text == "B and more" and longer.edited_from == second.id and "continued" in longer.tags
    edited = chat.edit("my words")
    assert edited.origin == "edited" and edited.parent == first.parent
    chat.move("prev")
    assert chat.cursor.id == longer.id
    with pytest.raises(SimlabError, match="unchanged"):
        chat.edit(chat.cursor.text)


def test_a_script_runs_every_line_and_a_bad_command_exits_2(fake_engine, store, capsys):
    chat = new_chat(fake_engine.enqueue([" Yes."]), store)
    code = run_script(chat, ["hello\n", "/nope\n", "/transcript\n"])
    assert code == 2
    assert "unknown command /nope" in capsys.readouterr().err
    out = chat.view.out.getvalue()
    assert "Bo: Yes.\n" in out and "Two people talk.\n\nBo: Hi.\nAnn: hello\nBo: Yes.\n" in out


def test_persona_switch_replays_the_user_turns_as_a_new_root(fake_engine, store, tmp_path):
    chat = new_chat(fake_engine, store)
    chat.user_turn("one")
    chat.user_turn("two")
    other = tmp_path / "other.yaml"
    other.write_text('name: other\nframe: "Q and A.\\n\\n"\nspeakers: {user: Q, model: A}\n')
    handle(chat, f"/persona {other}")
    assert len(chat.tree.roots) == 2
    path = chat.path()
    assert [(n.role, n.speaker, n.text) for n in path] == [
        ("frame", None, "Q and A.\n\n"),
        ("user", "Q", "one"),
        ("model", "A", "reply 7"),
        ("user", "Q", "two"),
        ("model", "A", "reply 8"),
    ]  # the original seeds, the new framing
    assert chat.transcript().startswith("Q and A.\n\nQ: one\nA: reply 7\n")


def test_a_persona_switch_samples_a_continued_reply_instead_of_copying_it(fake_engine, store, tmp_path):
    """`/continue` joins two samplings in one reply with no one (params, seed) for the whole: under
    another persona it is still a reply, sampled with the seed of the reply it continued and room for
    what the continuation added (a new user saw the old persona's words copied, origin 'replayed')."""
    chat = new_chat(fake_engine, store)
    [first] = chat.user_turn("Where were you born?")
    handle(chat, "/continue")
    continued = chat.cursor
    assert continued.params is None and "continued" in continued.tags
    other = tmp_path / "other.yaml"
    other.write_text('name: other\nframe: "Q and A.\\n\\n"\nspeakers: {user: Q, model: A}\n')
    handle(chat, f"/persona {other}")
    reply = chat.path()[-1]
    assert reply.role == "model" and reply.text != continued.text
    assert reply.params is not None and reply.seed == first.seed  # a draw, replayable on its own
    assert reply.params["max_new_tokens"] == first.params["max_new_tokens"] + len(continued.logprobs)
    assert "replaying 1 user turn(s) under other" in chat.view.out.getvalue()


def test_typed_text_does_not_show_the_replaced_replys_finish_marker(fake_engine, store):
    chat = new_chat(fake_engine, store)
    [reply] = chat.user_turn("How do they know you?")
    assert reply.finish_reason
    handle(chat, "/edit Yes. They know me by my gloves, and one of them")
    shown = chat.view.out.getvalue().splitlines()[-1]
    assert shown.endswith("one of them [2/2]") and f"[{reply.finish_reason}]" not in shown
    assert chat.cursor.finish_reason is None and chat.cursor.origin == "edited"


@pytest.mark.timeout(30)  # (before the fix the edit> prompt kept the keys: the chat never ended)
def test_ctrl_c_or_ctrl_d_in_an_inline_edit_cancels_it_and_saves_nothing(fake_engine, store, monkeypatch):
    monkeypatch.setattr("simlab.repl.app.pick_editor", lambda: None)  # inline, at an edit> prompt
    chat = new_chat(fake_engine.enqueue([" Fine."]), store)
    with create_pipe_input() as pipe:
        pipe.send_text("how are you\r/edit\r")
        time.sleep(0.5)  # (the edit> prompt comes up with the reply's text in it)
        pipe.send_text("\x03")
        time.sleep(0.3)
        pipe.send_text("/edit\r")  # and Ctrl-D, with the text still on the line
        time.sleep(0.5)
        pipe.send_text("\x04")
        time.sleep(0.3)
        pipe.send_text("/quit\r")
        assert run_interactive(chat, resumed=False, input=pipe, output=DummyOutput()) == 0
    assert chat.view.out.getvalue().count("(edit cancelled; nothing saved)") == 2
    assert not [n for n in chat.tree.nodes.values() if n.origin == "edited"]


def test_at_a_turn_of_yours_enter_samples_a_reply_and_typing_says_where_the_turn_goes(fake_engine, store):
    chat = new_chat(fake_engine.enqueue([" Fine.", " Well.", " Both."]), store)
    with create_pipe_input() as pipe:
        pipe.send_text("how are you\r/up\r\r/up\rand you?\r/quit\r")
        assert run_interactive(chat, resumed=False, input=pipe, output=DummyOutput()) == 0
    [asked] = [n for n in chat.tree.nodes.values() if n.text == "how are you"]
    under = chat.tree.children(asked.id)
    assert [(n.role, n.text) for n in under] == [("model", "Fine."), ("model", "Well."), ("user", "and you?")]
    assert [n.text for n in chat.tree.children(under[2].id)] == ["Both."]
    out = chat.view.out.getvalue()
    assert "Bo: Well." in out  # the empty Enter's reply, streamed
    assert "(a 2nd turn of yours, after your turn [1/1]: the reply reads both)" in out


def test_a_window_slides_when_the_chat_outgrows_the_context(store):
    from conftest import FakeEngine

    engine = FakeEngine(context_length=120)
    chat = new_chat(engine, store)
    replies = [r for i in range(6) for r in chat.user_turn(f"turn {i} with some words")]
    assert replies[0].window is None and replies[-1].window is not None
    assert "is longer than fake-model's context of 120 tokens" in chat.view.out.getvalue()
    assert engine.prompts[-1].startswith("Two people talk.\n\n") and "turn 0" not in engine.prompts[-1]


def persona_file(tmp_path, name, user, model, temperature):
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f'name: {name}\nframe: "{name}.\\n\\n"\nspeakers: {{user: {user}, model: {model}}}\n'
        f"sampling: {{temperature: {temperature}, max_tokens: 9}}\n"
    )
    return path


def test_a_persona_switch_applies_its_stops_and_defaults_keeping_what_was_set(fake_engine, store, tmp_path):
    chat = new_chat(fake_engine, store)
    chat.user_turn("one")
    handle(chat, "/set top_k 5")
    handle(chat, f"/persona {persona_file(tmp_path, 'play', 'HAMLET', 'GHOST', 0.3)}")
    assert chat.params.stop == ("\nHAMLET:", "\nGHOST:") and chat.params.temperature == 0.3
    assert chat.params.top_k == 5 and chat.params.max_new_tokens == 9
    assert "persona play: its sampling and stops apply; kept yours: top_k=5" in chat.view.out.getvalue()
    [reply] = chat.user_turn("two")
    assert reply.params["stop"] == ["\nHAMLET:", "\nGHOST:"] and reply.params["temperature"] == 0.3


def test_loading_a_session_applies_its_personas_stops(fake_engine, store, tmp_path):
    other = Persona(name="other", frame="Q and A.\n\n", user="Q", model="A", sampling={"temperature": 0.2})
    chat = new_chat(fake_engine, store)
    first = Chat.new(fake_engine, store, other, other.sampling_params(seed=1), LineView(io.StringIO()))
    first.user_turn("hello")
    name = first.session.name
    first.close()
    handle(chat, "/set stop \\n\\nÉtienne:")
    handle(chat, f"/load {name}")
    assert chat.params.stop == ("\n\nÉtienne:",)  # set by the user: kept, and said so
    handle(chat, "/set stop default")
    assert chat.params.stop == ("\nQ:", "\nA:") and chat.params.temperature == 0.8  # no file: the defaults
    assert chat.persona.user == "Q"


@pytest.mark.parametrize(
    "keys",
    ["\x03\x03", "\x03\x04", "\x03\r"],
    ids=["ctrl-c-twice", "cleared-then-ctrl-d", "cleared-then-enter"],
)
def test_cancelling_an_inline_edit_saves_nothing_and_the_repl_goes_on(fake_engine, store, keys):
    chat = new_chat(fake_engine, store)
    [reply] = chat.user_turn("hi")
    before = len(chat.tree.nodes)
    with create_pipe_input() as pipe:
        pipe.send_text("/edit\r" + keys + "/quit\r")
        assert run_interactive(chat, resumed=False, input=pipe, output=DummyOutput()) == 0
    assert len(chat.tree.nodes) == before and chat.cursor.id == reply.id
    assert "(edit cancelled; nothing saved)" in chat.view.out.getvalue()


def test_down_retraces_the_last_visited_child_and_survives_a_reload(fake_engine, store):
    chat = new_chat(fake_engine, store)
    [first] = chat.user_turn("x")
    chat.alternatives(2)  # the cursor is on the second sibling now
    handle(chat, "/pick 1")
    handle(chat, "/up")
    handle(chat, "/down")
    assert chat.cursor.id == first.id  # not the latest child: the one we came from
    chat.close()
    reloaded = SessionStore(store.folder).open(chat.session.name)
    reloaded.move("parent")
    assert reloaded.move("child").id == first.id


def test_hide_unhide_canonical_and_path(fake_engine, store):
    chat = new_chat(fake_engine, store)
    [reply] = chat.user_turn("x")
    handle(chat, "/canonical")
    assert "canonical" in chat.tree.get(reply.id).tags
    handle(chat, "/hide")
    assert chat.tree.get(reply.id).hidden and chat.cursor.id == reply.parent
    assert reply.id not in [n.id for n in chat.tree.children(reply.parent)]
    handle(chat, f"/unhide {reply.id[:8]}")
    assert not chat.tree.get(reply.id).hidden
    chat.view.out.seek(0)
    chat.view.out.truncate()
    handle(chat, "/path")
    assert (
        chat.view.out.getvalue() == "Two people talk.\nBo: Hi.\nAnn: x\n"
    )  # /unhide does not move the cursor
    with pytest.raises(SimlabError, match="frame cannot be hidden"):
        handle(chat, f"/goto {chat.tree.roots[0].id[:8]}")
        handle(chat, "/hide")
    reloaded = SessionStore(store.folder).open(chat.session.name, read_only=True)
    assert "canonical" in reloaded.tree.get(reply.id).tags and not reloaded.tree.get(reply.id).hidden


def test_loading_an_empty_session_changes_nothing(fake_engine, store):
    chat = new_chat(fake_engine, store)
    store.create("hollow").close()
    with pytest.raises(SimlabError, match="session 'hollow' is empty"):
        handle(chat, "/load hollow")
    assert chat.session.name != "hollow" and not chat.session.read_only
    [reply] = chat.user_turn("still here")  # the current session still takes writes
    store.open("hollow").close()  # and the empty one was not left locked


PLAY = Persona(
    name="lamp",
    frame="THE LAST LAMP\n\n",
    user="INSPECTOR",
    model="KEEPER",
    turn_template="{speaker}. {text}\n\n",
    greeting="Shut the door.",
)
ADVENTURE = Persona(
    name="cave",
    frame="Cave.\n\n",
    user="Player",
    model="Narrator",
    turn_template={"user": "> {text}\n", "model": "{text}\n\n"},
    stop=("\n>",),
)


@pytest.mark.parametrize(
    "persona, reply, expected",
    [
        (PLAY, " Aye.\n\nINSPECTOR.", "KEEPER. Shut the door.\nINSPECTOR. news\nKEEPER. Aye. [stop]\n"),
        (ADVENTURE, "Dark here.\n>", "> news\nDark here. [stop]\n"),
    ],
    ids=["stage-play", "text-adventure"],
)
def test_the_screen_shows_each_turn_as_the_template_renders_it_live_and_on_resume(
    fake_engine, store, persona, reply, expected
):
    out = io.StringIO()
    chat = Chat.new(
        fake_engine.enqueue([reply]), store, persona, persona.sampling_params(seed=1), LineView(out)
    )
    with create_pipe_input() as pipe:
        pipe.send_text("news\r/quit\r")
        run_interactive(chat, resumed=False, input=pipe, output=DummyOutput())
    shown = out.getvalue()
    assert expected.splitlines()[-1] + "\n" in shown and "Player:" not in shown and "KEEPER:" not in shown
    resumed = Chat(
        fake_engine, store, chat.session, persona, persona.sampling_params(), LineView(io.StringIO())
    )
    resumed.view.path()
    assert resumed.view.out.getvalue().endswith(expected)
    handle(resumed, "/tree")  # the tree heads turns as the template does too
    tree = resumed.view.out.getvalue().split(expected, 1)[1]
    heads = ["INSPECTOR. news", "KEEPER. Aye."] if persona is PLAY else ["> news", "Narrator: Dark here."]
    assert all(head in tree for head in heads), tree


def test_ctrl_c_at_an_empty_prompt_says_how_to_leave_and_the_repl_goes_on(fake_engine, store):
    chat = new_chat(fake_engine.enqueue([" Yes."]), store)
    with create_pipe_input() as pipe:
        pipe.send_text("\x03hello\r\x04")
        assert run_interactive(chat, resumed=False, input=pipe, output=DummyOutput()) == 0
    out = chat.view.out.getvalue()
    assert "(Ctrl-D or /quit leaves; everything is saved)" in out
    assert out.index("leaves;") < out.index("Bo: Yes. [eos]") < out.index("saved: session")


def test_editing_a_user_turn_answers_it_as_a_new_turn_would(fake_engine, store):
    chat = new_chat(fake_engine.enqueue([" First.", " Second."]), store)
    [first] = chat.user_turn("how are you")
    handle(chat, "/up")
    handle(chat, "/edit how have you been")
    edited = chat.tree.get(chat.cursor.parent)
    assert edited.text == "how have you been" and edited.origin == "edited"
    assert chat.cursor.role == "model" and chat.cursor.text == "Second." and chat.cursor.parent == edited.id
    assert "Bo: Second. [eos]\n" in chat.view.out.getvalue()


def test_the_toolbar_is_redrawn_when_the_model_finishes_loading(fake_engine, store, monkeypatch):
    import threading
    import time
    from concurrent.futures import Future

    import simlab.repl.app as app

    loading: Future = Future()
    chat = Chat(
        loading, store, store.create("l"), PERSONA, PERSONA.sampling_params(), LineView(io.StringIO())
    )
    drawn: list[tuple[float, str]] = []
    monkeypatch.setattr(app, "toolbar_text", lambda c: drawn.append((time.monotonic(), "x")) or "x")
    sent: list[float] = []
    with create_pipe_input() as pipe:

        def later() -> None:
            started = time.monotonic() + 10.0  # the load ends while the prompt is up (on a busy machine the
            while not drawn and time.monotonic() < started:  # first draw can come after 0.5 s: it then
                time.sleep(0.05)  # shows the loaded model itself, and no redraw is owed)
            time.sleep(0.2)
            loading.set_result(fake_engine)
            deadline = time.monotonic() + 5.0  # (a busy machine redraws late: wait for it, not a fixed time)
            while len(drawn) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            sent.append(time.monotonic())
            pipe.send_text("/quit\r")

        threading.Thread(target=later).start()
        assert run_interactive(chat, resumed=False, input=pipe, output=DummyOutput()) == 0
    loaded_draws = [t for t, _ in drawn if t < sent[0]]
    assert len(loaded_draws) >= 2  # the first prompt, then the redraw the loaded model asked for


@pytest.mark.parametrize("typo, meant", [("hlep", "help"), ("tokns", "tokens"), ("cannonical", "canonical")])
def test_a_mistyped_command_gets_a_suggestion_and_reaches_no_model(fake_engine, store, typo, meant):
    chat = new_chat(fake_engine, store)
    with pytest.raises(SimlabError, match=rf"unknown command /{typo} \(did you mean /{meant}\?\)"):
        handle(chat, f"/{typo}")
    assert fake_engine.prompts == []


def test_tokens_marks_the_stop_string_that_ended_a_reply(fake_engine, store):
    from simlab.repl.tokens import token_lines

    chat = new_chat(fake_engine.enqueue([" Fine.\nAnn:"]), store)
    [reply] = chat.user_turn("how are you")
    assert reply.text == "Fine." and len(reply.token_ids) == len(" Fine.\nAnn:")
    lines = token_lines(chat)
    assert lines[0] == "[ |0.61][F|0.61][i|0.61][n|0.61][e|0.61][.|0.61]('\\n')('A')('n')('n')(':')"
    marked = [line for line in lines[2:] if "stop string" in line]
    assert len(marked) == len("\nAnn:") and all(
        line.split()[1] in ("'\\n'", "'A'", "'n'", "':'") for line in marked
    )
    chat.view.style.color = (
        True  # in colour the stop string is quoted too: no newline, no "Ann:" to read as a prompt
    )
    coloured = token_lines(chat)[0]
    assert "\n" not in coloured and "\x1b[2m('A')\x1b[0m" in coloured and "\x1b[2m('\\n')\x1b[0m" in coloured


def test_tokens_rows_carry_on_under_the_alternatives_in_a_narrow_terminal(fake_engine, store, monkeypatch):
    """At 70 columns a row does not run past the terminal's edge (which would carry it on at column
    0, inside a quoted token): its alternatives and the stop-string note carry on under the
    alternatives' column, in the row's own entry, and a new row still starts with its position."""
    from simlab.repl.tokens import token_lines

    monkeypatch.setenv("COLUMNS", "70")
    chat = new_chat(fake_engine.enqueue([" Fine.\nAnn:"]), store)
    chat.user_turn("how are you")
    rows = token_lines(chat)[2:]
    assert len(rows) == len(" Fine.\nAnn:")
    for k, row in enumerate(rows):
        first, *more = row.split("\n")
        assert first.startswith(f"{k:>4} ") and all(len(line) <= 69 for line in [first, *more]), row
        assert all(line.startswith(" " * 30) and line[30] != " " for line in more), row
    marked = rows[-1].split("\n")
    assert "stop string" not in marked[0] and len(marked) >= 2
    assert " ".join(line.strip() for line in marked[1:]) == "(stop string: ended the reply, not in its text)"


def test_tokens_takes_a_node_id(fake_engine, store):
    chat = new_chat(fake_engine.enqueue([" One.", " Two."]), store)
    [first] = chat.user_turn("a")
    chat.user_turn("b")
    chat.view.out.seek(0)
    chat.view.out.truncate()
    handle(chat, f"/tokens {chat.tree.short(first.id)}")
    assert chat.view.out.getvalue().startswith("[ |0.61][O|0.61][n|0.61][e|0.61][.|0.61]\n")
    with pytest.raises(SimlabError, match=r"usage: /tokens \[ID\]"):
        handle(chat, "/tokens a b")
    with pytest.raises(SimlabError, match="no node 'zzzz'"):
        handle(chat, "/tokens zzzz")


def test_going_to_another_tree_of_the_session_samples_as_its_persona(fake_engine, store):
    """A compare session holds a tree per variant: /goto into another one brings its persona's
    stops and sampling (a new user found the first variant's stops cutting nothing in the second)."""
    from simlab.persona.library import find

    chat = new_chat(fake_engine, store)
    [first] = chat.user_turn("one")
    handle(chat, "/persona stage-play")
    play = find("stage-play")
    assert chat.persona.name == "stage-play" and chat.params.stop == play.stop_strings
    played = chat.path()[-1]
    handle(chat, f"/goto {first.id[:8]}")
    assert chat.persona.name == "duo" and chat.params.stop == ("\nAnn:", "\nBo:")
    assert "persona duo: its sampling and stops apply" in chat.view.out.getvalue()
    [reply] = chat.user_turn("two")
    assert reply.params["stop"] == ["\nAnn:", "\nBo:"]
    handle(chat, "/set top_k 7")
    handle(chat, f"/goto {played.id[:8]}")
    assert chat.persona.name == "stage-play" and chat.params.stop == play.stop_strings
    assert chat.params.temperature == play.sampling_params().temperature and chat.params.top_k == 7
    notes = chat.view.out.getvalue().count("its sampling and stops apply")
    handle(chat, f"/goto {chat.path()[0].id[:8]}")  # within the same tree: nothing changes
    assert chat.view.out.getvalue().count("its sampling and stops apply") == notes


@pytest.mark.parametrize("keeps_empty", [False, True])
def test_leaving_a_new_chat_where_nothing_was_said_offers_no_resume_of_a_removed_session(
    fake_engine, store, keeps_empty
):
    chat = new_chat(fake_engine, store)
    chat.keeps_empty = keeps_empty  # `simlab chat` alone removes such a session; --session NAME keeps it
    with create_pipe_input() as pipe:
        pipe.send_text("/quit\r")
        assert run_interactive(chat, resumed=False, input=pipe, output=DummyOutput()) == 0
    out = chat.view.out.getvalue()
    assert ("resume with: simlab chat --resume" in out) == keeps_empty
    assert ("nothing was said: no session kept" in out) == (not keeps_empty)
    # a session kept outside ./sessions: the hint names its folder, so it can be pasted anywhere
    assert (f"--sessions-dir {Path(store.folder).resolve()}" in out) == keeps_empty


def test_the_farewell_names_simlab_as_it_was_run(tmp_path, monkeypatch):
    """`resume with: …` can be pasted: `simlab` where that is the one on PATH, else the path used."""
    from simlab.config import invoked_as

    on_path = tmp_path / "bin" / "simlab"
    on_path.parent.mkdir()
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert invoked_as(str(on_path)) == "simlab"
    assert invoked_as(".venv/bin/simlab") == ".venv/bin/simlab"  # the README's way: not on PATH
    assert invoked_as(str(tmp_path / "my venv" / "bin" / "simlab")).startswith("'")  # pasted as one word
    assert invoked_as("simlab") == "simlab"
    assert invoked_as("/usr/lib/python3/site-packages/simlab/__main__.py") == "simlab"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_models_control_characters_reach_a_terminal_as_pictures_and_a_pipe_as_they_are(fake_engine, store):
    """ESC and BEL in a reply would be obeyed by a terminal (escape sequences, a bell): shown there as
    ␛ and ␇, kept as they are in the session and on a pipe."""
    text = " Hi\x1b]0;owned\x07 there\x1b[2J"
    for out, shown in ((Terminal(), " Hi␛]0;owned␇ there␛[2J"), (io.StringIO(), text)):
        chat = Chat.new(
            fake_engine.enqueue([text]), store, PERSONA, PERSONA.sampling_params(seed=1), LineView(out)
        )
        [reply] = chat.user_turn("hello")
        assert reply.text == text.strip()  # stored as written
        assert shown.strip() in out.getvalue() and ("\x1b]0;" in out.getvalue()) == (shown == text)
        chat.view.turn(reply)
        assert out.getvalue().rstrip().splitlines()[-1].startswith("Bo: " + shown.strip())


def test_a_reply_streamed_to_a_terminal_breaks_lines_between_words(fake_engine, store, monkeypatch):
    """A terminal cuts a long line wherever it reaches its edge, mid-word: the stream breaks it
    before the word that would cross it instead (the reply as stored keeps its own text)."""
    import os

    from simlab.repl.screen import WordWrap

    words = " The keeper kept a careful log of every ship that passed the light in the long winter"
    monkeypatch.setattr("shutil.get_terminal_size", lambda *a: os.terminal_size((30, 24)))
    out = Terminal()
    params = PERSONA.sampling_params(seed=1).with_overrides(max_new_tokens=200)
    chat = Chat.new(fake_engine.enqueue([words]), store, PERSONA, params, LineView(out))
    [reply] = chat.user_turn("hello")
    assert reply.text == words.strip()  # stored as written
    streamed = out.getvalue().split("Bo:", 2)[-1].split("[eos]")[0].rstrip()  # as the terminal shows it
    lines = streamed.split("\n")
    assert len(lines) > 2 and all(len(line.rstrip()) <= 30 for line in [("Bo:" + lines[0]), *lines[1:]])
    assert " ".join(w for line in lines for w in line.split()) == words.strip()  # no word cut
    wrap = WordWrap(10)
    assert wrap.feed("aaa bbb ccc") + wrap.end() == "aaa bbb\nccc"  # the space gives way to the break
    full = WordWrap(10)  # a line that fills the width: no space left to take a row of its own
    assert full.feed("aaaaa bbbb ccc") + full.end(" [eos]") == "aaaaa bbbb\nccc [eos]"
    assert WordWrap(10, 8).feed("xyz ") == "\nxyz"  # after a head of 8 columns (the space held)
    marker = WordWrap(10, 7)
    assert marker.end(" [length]") == "\n[length]"  # the finish marker is laid out like a word


def as_seen(written: str) -> str:
    """What a terminal's lines show after `written`: a backspace moves back, text overwrites."""
    lines = []
    for line in written.split("\n"):
        cells, col = [], 0
        for ch in line:
            if ch == "\b":
                col = max(col - 1, 0)
                continue
            cells[col : col + 1] = [ch]
            col += 1
        lines.append("".join(cells).rstrip())
    return "\n".join(lines)


def test_a_long_turn_shows_its_reading_after_the_label_then_the_reply_over_it(fake_engine, store):
    """A turn of 1,500 tokens takes seconds to read: `(reading 512/1,504 tokens)` after the label
    on a terminal, moving, then erased by the reply's first word; a short turn shows nothing."""
    out = Terminal()
    chat = Chat.new(
        fake_engine.enqueue([" Aye.", " Yes."]),
        store,
        PERSONA,
        PERSONA.sampling_params(seed=1),
        LineView(out),
    )
    chat.user_turn("x" * 1500)
    written = out.getvalue()
    assert "(reading 0/" in written and "(reading 1,024/" in written  # (its figures move)
    assert "\b" in written and as_seen(written).splitlines()[-1] == "Bo: Aye. [eos]"
    noted = Terminal()  # a note while the turn is read: the "(reading …)" erased first, the label kept
    view = LineView(noted)
    chat = Chat.new(fake_engine, store, PERSONA, PERSONA.sampling_params(seed=1), view)  # (" Yes." next)
    view.reading = lambda at, total, read=view.reading: [read(at, total), at == 512 and view.note("a note")]
    chat.user_turn("x" * 1500)
    assert as_seen(noted.getvalue()).splitlines()[-2:] == ["a note", "Bo: Yes. [eos]"]
    short = Terminal()
    chat = Chat.new(
        fake_engine.enqueue([" Yes."]), store, PERSONA, PERSONA.sampling_params(seed=1), LineView(short)
    )
    chat.user_turn("short")
    assert "reading" not in short.getvalue() and short.getvalue().splitlines()[-1] == "Bo: Yes. [eos]"


def test_a_typed_turn_goes_into_the_transcript_whole_between_words(fake_engine, store, monkeypatch):
    """prompt-toolkit shows a turn taller than the screen by its last rows only and never writes its
    top: it erases what it drew, and the turn is written whole, with its label, broken between words
    at the terminal's width, as replies are."""
    import os

    words = " ".join(f"word{i}" for i in range(60))  # (taller than a 30 x 8 screen)
    monkeypatch.setattr("shutil.get_terminal_size", lambda *a: os.terminal_size((30, 8)))
    out = Terminal()
    chat = Chat.new(
        fake_engine.enqueue([" Noted."]), store, PERSONA, PERSONA.sampling_params(seed=1), LineView(out)
    )
    with create_pipe_input() as pipe:
        pipe.send_text(words + "\r/quit\r")
        assert run_interactive(chat, resumed=False, input=pipe, output=DummyOutput()) == 0
    shown = out.getvalue()
    turn = shown[shown.index("Ann: ") : shown.index("Bo: Noted.")].rstrip("\n").split("\n")
    assert len(turn) > 8 and all(len(line) <= 30 for line in turn)
    assert " ".join(" ".join(turn).split()[1:]) == words  # every word, none cut, after the label
    assert "Ann: /quit" in shown  # (a command too)


def test_a_turn_shown_again_on_a_terminal_breaks_between_words_too(fake_engine, store, monkeypatch):
    """On resume and /path the turns are laid out as when they streamed: no word cut at the edge."""
    import os

    words = " The keeper kept a careful log of every ship that passed the light in the long winter"
    monkeypatch.setattr("shutil.get_terminal_size", lambda *a: os.terminal_size((30, 24)))
    params = PERSONA.sampling_params(seed=1).with_overrides(max_new_tokens=200)
    chat = Chat.new(fake_engine.enqueue([words]), store, PERSONA, params, LineView(io.StringIO()))
    [reply] = chat.user_turn("hello")
    chat.view.out = Terminal()
    chat.view.turn(reply)
    lines = chat.view.out.getvalue().rstrip("\n").split("\n")
    assert len(lines) > 2 and all(len(line) <= 30 for line in lines)
    assert " ".join(lines).split("Bo: ", 1)[1].startswith(words.strip())  # every word whole, in order


def test_notes_and_a_commands_lines_break_between_words_on_a_terminal(fake_engine, store, monkeypatch):
    """Not only streamed replies: the banner, the notes and what a command says (/info, /params) are
    laid out between words on a terminal (/set with nothing to set lists the settings), and are
    the very text on a pipe."""
    import os

    from simlab.repl.app import banner

    monkeypatch.setattr("shutil.get_terminal_size", lambda *a: os.terminal_size((40, 24)))
    for stream in (Terminal(), io.StringIO()):
        chat = Chat.new(fake_engine, store, PERSONA, PERSONA.sampling_params(seed=1), LineView(stream))
        banner(chat, resumed=False)
        handle(chat, "/set")
        lines = stream.getvalue().rstrip("\n").split("\n")
        if isinstance(stream, Terminal):
            # (a word longer than the width, the sessions folder's path, is the terminal's to cut)
            assert len(lines) > 4 and all(len(line) <= 40 or "/sessions" in line for line in lines)
            assert not any(line.startswith(" ") or line.endswith(" ") for line in lines)
        else:
            assert len(lines) == 3 and len(lines[0]) > 40  # a pipe gets each line whole
            assert lines[2].startswith("autoloom: p_threshold")  # (and /set lists the autoloom's knobs)


def test_leaving_a_read_only_session_says_nothing_was_written(fake_engine, store):
    from simlab.repl.app import farewell

    chat = new_chat(fake_engine, store)
    chat.user_turn("hello")
    chat.session.close()
    opened = store.open(chat.session.name, read_only=True)
    viewer = Chat(fake_engine, store, opened, PERSONA, chat.params, LineView(io.StringIO()))
    assert farewell(viewer) == 0
    shown = viewer.view.out.getvalue()
    assert "was open read-only: nothing was written to it" in shown and "saved: session" not in shown


def test_continue_where_the_model_adds_nothing_saves_no_copy(fake_engine, store):
    """/continue on a reply that ended at its stop: the model ends it again at once; a sibling with
    the same text would say nothing new, so none is saved and the screen says why."""
    chat = new_chat(fake_engine.enqueue([" Fine.", ""]), store)
    [reply] = chat.user_turn("hello")
    count = len(chat.tree.nodes)
    assert chat.continue_reply() is reply and len(chat.tree.nodes) == count
    assert "(the model adds nothing: it ends the reply again; nothing saved)" in chat.view.out.getvalue()


def test_a_reply_streamed_beside_others_says_its_place_and_a_turn_of_yours_says_what_enter_does(
    fake_engine, store
):
    chat = new_chat(fake_engine.enqueue([" One.", " Two."]), store)
    chat.user_turn("hello")
    chat.regen()
    assert chat.view.out.getvalue().rstrip().endswith("Bo: Two. [eos] [2/2]")
    handle(chat, "/up")
    handle(chat, "/down")
    handle(chat, "/up")
    told = "(at a turn of yours: Enter samples a reply to it; what you type is a 2nd turn of yours)"
    assert chat.view.out.getvalue().count(told) == 1  # said once


def test_persona_in_a_read_only_session_is_refused_before_anything_is_said(fake_engine, store):
    chat = new_chat(fake_engine, store)
    chat.user_turn("hello")
    chat.session.close()
    viewer = Chat(
        fake_engine,
        store,
        store.open(chat.session.name, read_only=True),
        PERSONA,
        chat.params,
        LineView(io.StringIO()),
    )
    with pytest.raises(SimlabError, match="read-only"):
        handle(viewer, "/persona interview")
    assert viewer.view.out.getvalue() == "" and viewer.persona.name == "duo"


def test_the_models_load_steps_go_to_the_status_line_not_under_the_prompt(
    fake_engine, store, capsys, monkeypatch
):
    """A background load's steps (a GGUF's conversion) are the toolbar's, not lines on the terminal."""
    from concurrent.futures import Future

    from simlab.models import gguf
    from simlab.repl.loading import Loading, Status

    status = Status()
    seen = []
    loading = Loading(Future(), status)
    loading.on_status(lambda: seen.append(status.text))
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    with gguf.stage("reading the GGUF metadata", status):
        pass
    assert capsys.readouterr().err == ""  # no ticking line written under the prompt
    assert seen[0] == "reading the GGUF metadata" and seen[-1].startswith(
        "reading the GGUF metadata: done in"
    )
    chat = Chat(
        loading, store, store.create("l"), PERSONA, PERSONA.sampling_params(), LineView(io.StringIO())
    )
    assert toolbar_text(chat, 200).startswith(" loading the model: reading the GGUF metadata: done in")


def test_a_line_with_a_label_goes_on_under_its_value_on_a_terminal(fake_engine, store, monkeypatch):
    import os

    monkeypatch.setattr("shutil.get_terminal_size", lambda *a: os.terminal_size((30, 24)))
    view = LineView(Terminal())
    view.say("sampling  temperature 0.9 top_p 0.95 repetition_penalty 1.0")
    assert (
        view.out.getvalue()
        == "sampling  temperature 0.9\n          top_p 0.95\n          repetition_penalty\n          1.0\n"
    )


def test_the_rest_of_a_split_turn_is_sampled_again_inside_the_turn_and_replays(fake_engine, store):
    """/regen on the second piece of a split reply writes on from the first piece, inside the same
    turn (no label of its own); replay reads it the same way, and /persona keeps the turn whole."""
    from simlab.frame.render import PIECE, render_path
    from simlab.replay import check_path
    from simlab.session import shape

    chat = new_chat(fake_engine.enqueue([" Yes. It was buried in the limestone underground."]), store)
    [reply] = chat.user_turn("Was it found?")
    first, rest = shape.split(chat.session, reply.id, len("Yes. It was"))
    chat.session.goto(rest.id)
    [again] = chat.regen()  # (no script queued: the FakeEngine writes "reply <seed>")
    assert again.parent == first.id and PIECE in again.tags and again.speaker == "Bo"
    assert fake_engine.prompts[-1] == "Two people talk.\n\nBo: Hi.\nAnn: Was it found?\nBo: Yes. It was"
    assert render_path(chat.path()).endswith("Ann: Was it found?\nBo: Yes. It wasreply 8\n")
    assert "…reply 8" in chat.view.out.getvalue()  # streamed as the rest of the turn, not a new one
    [check] = [c for c in check_path(fake_engine, chat.session, chat.path()) if c.node.id == again.id]
    assert check.reproduced
    handle(chat, "/persona interview")
    replayed = render_path(chat.path())
    assert replayed.count("Dr. Okafor:") == 2  # the greeting, and the split answer as one turn


def test_a_batch_of_siblings_moves_the_live_bar_with_their_tokens():
    """Siblings decoded as one batch end together: on a terminal the bar (and so its time left)
    moves with their tokens, not only when a reply ends (it sat at 1/4 for a minute)."""
    from types import SimpleNamespace

    from simlab.repl.progress import Waiting

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    going = [SimpleNamespace(finish_reason=None, tokens=[0] * 5) for _ in range(3)]
    with Waiting("sampling", 3, stream=Terminal()) as wait:
        wait.follow(None, going, limit=20)
        assert wait.done == 0 and wait._live.tasks[0].completed == pytest.approx(0.75)
        going[0].finish_reason = "eos"
        wait.follow(None, going, limit=20)
        assert wait.done == 1 and wait._live.tasks[0].completed == pytest.approx(1.5)


def test_a_long_wait_for_the_first_token_reads_in_seconds():
    from simlab.repl.views import waited

    assert waited(914.2) == "914 ms" and waited(9_999) == "9999 ms"
    assert waited(398_879) == "398.9 s"  # (a long document's prefill: `398879 ms` was hard to read)


def test_a_run_stopped_before_its_first_token_leaves_the_figures_and_the_seed_as_they_were(
    fake_engine, store
):
    """A Ctrl-C while a long prompt is read saves nothing; the toolbar went on to show `0.0 tok/s ·
    first token 0 ms` for it, and the next reply took the next seed. Both stay as they were."""
    from simlab.repl.views import toolbar_text

    chat = new_chat(fake_engine, store)
    chat.user_turn("hello")
    before = chat.last
    assert before is not None and before.stats.generated_tokens > 0
    start = fake_engine.start

    def stopped_at_once(*args, **kwargs):
        run = start(*args, **kwargs)
        run.interrupt()
        return run

    fake_engine.start = stopped_at_once
    count = len(chat.tree.nodes)
    chat.user_turn("and then?")
    assert len(chat.tree.nodes) == count + 1  # (the turn of yours alone)
    assert chat.last is before and f"{before.tokens_per_second:.1f} tok/s" in toolbar_text(chat, 200)
    assert chat.seed == 8  # (seed 7 took the first reply; the stopped run's seed 8 is taken again)
    chat.reply(chat.tree.cursor, n=3)  # three siblings stopped before their first token: all given back
    assert chat.seed == 8
    fake_engine.start = start
    [reply] = chat.reply(chat.tree.cursor)
    assert reply.seed == 8 and chat.seed == 9
    fake_engine.enqueue([" a", " b", " c"])
    assert [n.seed for n in chat.reply(reply.parent, n=3)] == [9, 10, 11] and chat.seed == 12


def test_the_toolbar_names_weights_other_than_the_usual_ones(fake_engine, store):
    """gguf (a GGUF's default) and float go unsaid; gguf-a8, int8 or int4 sample other numbers: said."""
    from dataclasses import replace

    from simlab.repl.views import toolbar_text

    chat = new_chat(fake_engine, store)
    assert " cpu · " in toolbar_text(chat, 300) and "gguf" not in toolbar_text(chat, 300)
    fake_engine.info = replace(fake_engine.info, weights="gguf-a8")
    assert " cpu gguf-a8 · " in toolbar_text(chat, 300)


def test_tokens_tells_a_label_cut_off_at_the_length_limit_from_a_stop_string(fake_engine, store):
    """A reply cut off by the length limit in the next speaker's label ("\\nA" of "\\nAnn:") keeps the
    text before it; /tokens marks those tokens as left out where the reply ended, not as a stop
    string that ended it (it ended at the limit)."""
    from simlab.repl.tokens import token_lines

    chat = new_chat(fake_engine.enqueue([" Fine.\nAnn: more"]), store)
    chat.params = chat.params.with_overrides(max_new_tokens=8)  # " Fine.\nA": the limit in the label
    [reply] = chat.user_turn("how are you")
    assert (reply.text, reply.finish_reason) == ("Fine.", "length")
    lines = token_lines(chat)
    left = [" ".join(line.split()) for line in lines if "not in its text" in line]  # (a row's lines, as one)
    assert len(left) == 2 and all("where the reply ended (length)" in line for line in left)  # "\n", "A"
    assert not any("stop string" in line for line in lines)
