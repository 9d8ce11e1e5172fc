"""Conversations longer than the context: the frame stays, old turns slide out at turn boundaries,
the REPL says so once, each reply records its window, and replay reads what the reply read."""

import io

import pytest
from conftest import build_tiny_gpt2

from simlab.errors import SimlabError
from simlab.frame.window import fit_prompt, windowed
from simlab.persona.schema import Persona
from simlab.repl.commands import handle
from simlab.repl.screen import LineView
from simlab.repl.state import Chat
from simlab.replay import check_path
from simlab.session.store import SessionStore

PERSONA = Persona(
    name="short",
    frame="A conversation between two people.\n\n",
    user="User",
    model="Bot",
    greeting="Hello.",
    sampling={"max_tokens": 8, "temperature": 1.0},
)
CONTEXT = 192


@pytest.fixture(scope="module")
def short_engine(tmp_path_factory):
    """The tiny GPT-2 with a 192-token context, without EOS so each reply runs to its limit."""
    from simlab.config import Settings
    from simlab.engine.local import Engine
    from simlab.models.load import load_model

    folder = build_tiny_gpt2(tmp_path_factory.mktemp("short-gpt2"), n_positions=CONTEXT, with_eos=False)
    return Engine(load_model(str(folder), Settings(device="cpu", dtype="float32")))


def new_chat(engine, tmp_path, seed=3):
    out = io.StringIO()
    chat = Chat.new(
        engine,
        SessionStore(tmp_path / "sessions"),
        PERSONA,
        PERSONA.sampling_params(seed=seed),
        LineView(out),
    )
    return chat, out


def test_a_short_transcript_is_read_whole(short_engine, tmp_path):
    chat, _ = new_chat(short_engine, tmp_path)
    [reply] = chat.user_turn("hi")
    assert reply.window is None
    fit = fit_prompt(chat.tree.path(reply.parent), "Bot", short_engine, 8)
    assert fit.window is None and fit.path == chat.tree.path(reply.parent)


def test_a_long_chat_slides_at_turn_boundaries_keeping_the_frame(short_engine, tmp_path):
    chat, out = new_chat(short_engine, tmp_path)
    frame = chat.tree.roots[0]
    replies = []
    for i in range(14):
        replies += chat.user_turn(f"turn number {i} with a few words")
    assert len(replies) == 14  # never crashed, every turn answered
    windowed_replies = [r for r in replies if r.window]
    assert windowed_replies and replies[0].window is None
    frame_ids = short_engine.encode(frame.text)
    for reply in windowed_replies:
        window = reply.window
        path = chat.tree.path(reply.parent)
        kept = windowed(path, window["from"])
        assert kept[0] is frame and kept[1].id == window["from"]
        assert window["dropped"] == len(path) - len(kept)  # whole turns left out, nothing cut mid-turn
        assert window["prompt_tokens"] + 8 <= CONTEXT  # room for the whole reply
        assert len(reply.token_ids) == 8
        fit = fit_prompt(path, "Bot", short_engine, 8)
        assert fit.prompt[: len(frame_ids)] == frame_ids
    # the window moves seldom: several replies in a row read from the same first turn
    starts = [r.window["from"] for r in windowed_replies]
    assert len(set(starts)) < len(starts)
    assert out.getvalue().count("longer than") == 1  # said once
    reloaded = SessionStore(tmp_path / "sessions").open(chat.session.name, read_only=True)
    assert reloaded.tree.get(windowed_replies[-1].id).window == windowed_replies[-1].window


def test_replay_reads_what_each_windowed_reply_read(short_engine, tmp_path):
    chat, _ = new_chat(short_engine, tmp_path)
    for i in range(10):
        chat.user_turn(f"another turn {i} to fill the context")
    path = chat.path()
    assert any(n.window for n in path)
    checks = check_path(short_engine, chat.session, path)
    assert checks and all(c.reproduced for c in checks)


def test_a_turn_longer_than_the_room_clips_the_reply_or_says_what_to_shorten(short_engine, tmp_path):
    chat, out = new_chat(short_engine, tmp_path)
    chat.user_turn("short")

    # frame + this turn leave fewer than 8 tokens: the reply is clipped to the room, not refused
    def room(words: int) -> int:
        text = PERSONA.render_frame() + "User: " + " ".join(["word"] * words) + "\nBot:"
        return CONTEXT - len(short_engine.encode(text))

    words = next(w for w in range(1, 200) if room(w) < 8)
    assert room(words) >= 1
    long_turn = " ".join(["word"] * words)
    [reply] = chat.user_turn(long_turn)
    assert reply.window["dropped"] >= 2 and 1 <= len(reply.token_ids) < 8 and reply.finish_reason == "length"
    # a turn that cannot fit at all: one clear line, the REPL goes on, the turn is kept
    before = len(chat.tree.nodes)
    with pytest.raises(SimlabError, match="alone are .* reads at most 192"):
        handle(chat, " ".join(["word"] * 400))
    assert len(chat.tree.nodes) == before + 1
    [later] = chat.user_turn("and a short one after")
    assert later.token_ids
