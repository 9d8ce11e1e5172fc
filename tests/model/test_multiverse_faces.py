"""The multiverse in the two faces: /multiverse in the chat (grow, zoom, out, keep) and the Loom
editor's pane (M) driven through prompt-toolkit's pipe input at 80x24, on the tiny GPT-2."""

import io
import re

import pytest
from conftest import IDLE, drive
from prompt_toolkit.data_structures import Size

from simlab.errors import SimlabError
from simlab.persona.schema import Persona
from simlab.repl.commands import handle
from simlab.repl.screen import LineView
from simlab.repl.state import Chat
from simlab.session import multiverse as sm
from simlab.turns import start_session

SHARP = {"temperature": 0.5, "top_k": 5, "max_tokens": 4}  # (the tiny random model is nearly flat)
DUO = Persona(name="duo", frame="Two talk.\n\n", user="Ann", model="Bo", sampling=SHARP)


def chat_on(tiny_engine, store, persona=DUO, name="mv"):
    session = start_session(store, persona, name)
    return Chat(
        tiny_engine, store, session, persona, persona.sampling_params(seed=1), LineView(io.StringIO())
    )


def said(chat) -> str:
    return chat.view.out.getvalue()


def test_the_chats_multiverse_grows_zooms_out_and_keeps_a_block(tiny_engine, store):
    chat = chat_on(tiny_engine, store)
    user = chat.session.add_child(chat.cursor.id, "user", "Where is the keeper?", speaker="Ann")
    chat.session.goto(user.id)
    handle(chat, "/multiverse 3 0.02")
    out = said(chat)
    assert "multiverse · depth 3, cutoff 0.02" in out and "forward passes in" in out
    [saved] = chat.tree.multiverses[user.id]
    assert saved["params"]["temperature"] == 0.5 and saved["params"]["top_k"] == 5  # the chat's sampling
    whole = sm.tree(saved)
    first = sm.rows(whole)[0]
    assert first.children, "the tiny model's first block should grow deeper at 2%"
    # zoom into block 1: its continuations renormalised to 100% (what they cover of it, at its depth + 1)
    handle(chat, "/multiverse zoom 1")
    zoomed = said(chat).split("in " + repr(first.text).replace("'", '"'))[-1]
    shares = [float(m) for m in re.findall(r"(\d+\.\d)%  ", zoomed)]
    children = sum(c.p for c in first.children) / first.p
    assert shares[0] == pytest.approx(100 * first.children[0].p / first.p, abs=0.06)
    assert f"covers {100 * children:.1f}% at depth 2 of" in zoomed
    handle(chat, "/multiverse out")
    assert chat.multiverse.zoom is chat.multiverse.root and chat.multiverse.selected == 0
    # keep block 1 of the zoomed view: a reply chosen, not sampled; the cursor goes there
    handle(chat, "/multiverse zoom 1")
    handle(chat, "/multiverse keep 1")
    kept = chat.cursor
    assert kept.origin == "chosen" and kept.parent == user.id and kept.speaker == "Bo"
    assert kept.token_ids == first.children[0].ids and "kept as" in said(chat)
    # /tokens says it was chosen; on it, the multiverse shown is the one its siblings are drawn from
    handle(chat, "/tokens")
    assert "kept from a multiverse" in said(chat)
    handle(chat, "/multiverse show")
    assert said(chat).count("multiverse · depth 3") >= 3
    for bad, wanted in (("/multiverse zoom x", "usage"), ("/multiverse 99", "depth 1 to 64"),
                        ("/multiverse keep 999", "no block 999")):  # fmt: skip
        with pytest.raises(SimlabError, match=wanted):
            handle(chat, bad)


def test_the_loom_pane_zooms_and_keeps_with_keys(tiny_engine, store):
    from simlab.repl.loom import Loom

    persona = Persona(name="document", frame="The lamp burned all", mode="document", sampling=SHARP)
    chat = chat_on(tiny_engine, store, persona, "doc")
    frame = chat.cursor
    loom = Loom(chat)
    screen = drive(
        loom, ["M", IDLE, "\x1b[B", "\x1b[C", "\x1b[D", "\r", IDLE, "q"], Size(rows=24, columns=80)
    )
    [saved] = chat.tree.multiverses[frame.id]
    assert "multiverse · depth 8, cutoff 0.01" in screen and "covers" in screen
    from simlab.repl.loom_multiverse import covered, fragments

    assert covered(loom).startswith("covers ") and not any("covers" in text for _, text in fragments(loom))
    kept = [n for n in chat.tree.children(frame.id) if n.origin == "chosen"]
    second = sm.rows(sm.tree(saved))[1]  # ↓ chose block 2; → zoomed into it and ← came back to it
    assert [n.token_ids for n in kept] == [second.ids] and chat.cursor.id == kept[0].id
    assert chat.multiverse.zoom is chat.multiverse.root and chat.multiverse.selected == 1
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert second.children and "·in" in drawn.replace(" ", "")  # (the zoomed title was drawn)
