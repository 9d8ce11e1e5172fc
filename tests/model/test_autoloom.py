"""The adaptive autoloom (turns.autoloom): nodes cut where the distribution forks, as the thresholds
define it, children at the fork (its likeliest tokens, or seeded samples), every node replayable."""

import math

import pytest

from simlab.engine.params import SamplingParams
from simlab.errors import SimlabError
from simlab.frame.render import render_path
from simlab.persona.schema import Persona
from simlab.replay import check_path
from simlab.turns import start_session
from simlab.turns.autoloom import Knobs, grow, parse

DOC = Persona(name="document", frame="The keeper wrote in his log that", mode="document")


def counter(first=5):
    state = {"next": first}

    def take(k):
        seed, state["next"] = state["next"], state["next"] + k
        return seed

    return take


def top_probabilities(engine, session, node) -> list[float]:
    """At each of the node's tokens, the model's own probability of its likeliest token there, read
    one sequence at a time (the document before it, then the node's tokens)."""
    import torch

    prompt = engine.encode(render_path(session.tree.path(node.parent)))
    ids = prompt + list(node.token_ids)
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0].float()
    probs = logits.softmax(-1)
    return [float(probs[len(prompt) - 1 + k].max()) for k in range(len(node.token_ids) + 1)]


@pytest.mark.parametrize("mode", ["forks", "sampled"])
def test_each_node_is_cut_where_the_thresholds_say_and_replays(tiny_engine, store, mode):
    session = start_session(store, DOC, f"grow-{mode}")
    start = session.tree.cursor
    knobs = Knobs(conf_threshold=0.35, p_threshold=0.05, min_tokens=2, max_depth=3, budget=120, mode=mode)
    params = SamplingParams(temperature=0.7, top_k=8, max_new_tokens=12)
    grown = grow(tiny_engine, session, start, params, knobs, counter())
    assert grown.nodes and grown.tokens == sum(len(n.token_ids) for n in grown.nodes) <= 120 + 12
    forked = [n for n in grown.nodes if n.finish_reason == "fork"]
    assert forked, "the tiny model is unsure often enough for forks at 35%"
    for node in grown.nodes:
        tops = top_probabilities(tiny_engine, session, node)
        given = node.forced["tokens"] if node.forced else 0
        first = max(knobs.min_tokens, given + 1)
        # no token from `first` on was drawn where the model was unsure ...
        assert all(p >= knobs.conf_threshold - 1e-6 for p in tops[first : len(node.token_ids)]), (node, tops)
        if node.finish_reason == "fork":  # ... and the node ends right before the first such token
            assert len(node.token_ids) >= first and tops[len(node.token_ids)] < knobs.conf_threshold + 1e-6
        if mode == "forks":  # each child begins with a token of probability >= p_threshold at the fork
            assert node.forced == {"at": 0, "tokens": 1, "choice": "fork point"}
            assert (
                math.exp(node.logprobs[0]) >= knobs.p_threshold - 1e-6
                or len(session.tree.children(node.parent)) == 1
            )
    # siblings at a fork: forks mode, distinct first tokens, likeliest first
    if mode == "forks":
        for node in forked:
            kids = session.tree.children(node.id)
            firsts = [k.token_ids[0] for k in kids]
            assert len(set(firsts)) == len(firsts) and len(kids) <= knobs.children
            assert [k.logprobs[0] for k in kids] == sorted((k.logprobs[0] for k in kids), reverse=True)
    # every node replays: its seed and settings draw its tokens again, to its cut
    for node in grown.nodes:
        checks = [
            c for c in check_path(tiny_engine, session, session.tree.path(node.id)) if c.node.id == node.id
        ]
        assert checks and checks[0].reproduced, checks
    session.close()


def test_budget_depth_prune_regrowth_and_stop(tiny_engine, store):
    params = SamplingParams(temperature=0.7, top_k=8, max_new_tokens=12)
    sure = {"conf_threshold": 0.35, "p_threshold": 0.05, "min_tokens": 2}
    session = start_session(store, DOC, "bounds")
    start = session.tree.cursor
    spent = grow(tiny_engine, session, start, params, Knobs(**sure, budget=10, max_depth=20), counter())
    assert spent.stopped == "budget" and 10 <= spent.tokens <= 10 + 3 * 12
    # grown again, it goes on from the branches it made (the same fork tokens): nothing twice
    first_level = session.tree.children(start)
    again = grow(tiny_engine, session, start, params, Knobs(**sure, max_depth=1), counter(50))
    assert again.nodes == [] and session.tree.children(start) == first_level and again.stopped == "depth"
    deeper = grow(tiny_engine, session, start, params, Knobs(**sure, max_depth=12, budget=60), counter(60))
    assert deeper.nodes and session.tree.children(start)[: len(first_level)] == first_level
    for node in session.tree.nodes.values():  # (one branch a fork token, everywhere)
        firsts = [n.token_ids[0] for n in session.tree.children(node.id)]
        assert len(firsts) == len(set(firsts))
    session.close()
    session = start_session(store, DOC, "bounds-2")
    start = session.tree.cursor
    one = grow(tiny_engine, session, start, params, Knobs(**sure, max_depth=1), counter())
    assert one.nodes and {n.parent for n in one.nodes} == {start} and one.stopped == "depth"
    pruned = grow(tiny_engine, session, start, params, Knobs(**sure, prune=1.0), counter(90))
    assert pruned.nodes == [] and pruned.stopped == "ended"  # (every branch is below probability 1)
    made = []  # Ctrl-C once the first node is saved: it stops, and what it grew is in the session
    knobs = Knobs(conf_threshold=0.35, min_tokens=2, p_threshold=0.01, children=5)
    stopped = grow(tiny_engine, session, start, params, knobs, counter(200), made.append, lambda: bool(made))
    assert stopped.stopped == "interrupted" and stopped.nodes == made and len(made) == 1
    assert made[0].id in store.open("bounds-2", read_only=True).tree.nodes
    session.close()


def test_knobs_are_checked_in_one_line():
    assert parse("p_threshold", "0.2") == {"p_threshold": 0.2}
    assert parse("mode", "sampled") == {"mode": "sampled"}
    for name, value, wanted in (
        ("p_threshold", "2", "from 0 to 1"),
        ("min_tokens", "x", "whole number"),
        ("mode", "beam", "forks, sampled"),
        ("bogus", "1", "not an autoloom knob"),
    ):
        with pytest.raises(SimlabError, match=wanted):
            parse(name, value)


def test_a_chat_is_refused(tiny_engine, store):
    session = start_session(store, Persona(name="duo", frame="Two talk.\n\n", user="A", model="B"), "c")
    with pytest.raises(SimlabError, match="grows documents"):
        grow(tiny_engine, session, session.tree.cursor, SamplingParams(), Knobs(), counter())


def test_loom_grow_from_the_command_line_and_the_knobs_it_keeps(capsys, store, tiny_dir, tmp_path):
    from conftest import run_cli

    folder = ["--sessions-dir", store.folder, "--model", tiny_dir]
    argv = ["loom", "--grow", "--text", "The keeper wrote", "--session", "g", "--seed", "4"]
    knobs = ["--conf-threshold", "0.35", "--min-tokens", "2", "--max-depth", "2", "--budget", "60", "-n", "2"]
    code, out, err = run_cli(capsys, *argv, *knobs, "--max-tokens", "10", *folder)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[-1].startswith("grew ") and "all saved in g" in lines[-1] and "under " in lines[0]
    with store.open("g", read_only=True) as session:
        grown = [n for n in session.tree.nodes.values() if n.role == "model"]
        assert len(grown) == len(lines) - 1 and all(n.seed is not None for n in grown)
        assert all(len(session.tree.children(n.id)) <= 2 for n in session.tree.nodes.values())
        saved = session.tree.settings["grow"]
        assert saved["conf_threshold"] == 0.35 and saved["max_depth"] == 2 and saved["children"] == 2
    # again on the saved session: its knobs go on (flags change them); every node replays
    code, out, err = run_cli(capsys, "loom", "g", "--grow", "--budget", "20", *folder)
    assert code == 0 and "conf_threshold 0.35" in err, err
    with store.open("g", read_only=True) as session:
        deepest = max(session.tree.nodes.values(), key=lambda n: len(session.tree.path(n.id)))
    code, out, err = run_cli(capsys, "replay", "g", "--node", deepest.id, "--sessions-dir", store.folder)
    assert code == 0 and "reproduced 2/2 replies exactly" in out, out + err
    for flags, wanted in (
        (["--conf-threshold", "3"], "from 0 to 1"),
        (["--budget", "0"], "from 1 to"),
        (["--min-tokens", "0"], "from 1 to"),
    ):
        code, _, err = run_cli(capsys, "loom", "g", "--grow", *flags, *folder)
        assert code == 2 and wanted in err and len(err.strip().splitlines()) == 1, err
    start_session(store, Persona(name="duo", frame="Two talk.\n\n", user="A", model="B"), "chat").close()
    store.create("empty").close()
    for argv, wanted in (
        (["chat", "--grow"], "grows documents"),  # (before the model loads: one line, no knob line)
        (["g", "--conf-threshold", "0.3"], "with --grow"),
        (["g", "--grow", "--steer", "keeper:1"], "does not reach the autoloom"),
        (["--grow", "--text", "x", "--session", "g"], "exists"),
        (["empty", "--grow"], "is empty"),
    ):
        code, _, err = run_cli(capsys, "loom", *argv, *folder)
        assert code == 2 and wanted in err and len(err.strip().splitlines()) == 1, err
    argv = ["loom", "--grow", "--text", "x", "--session", "nomodel", "--sessions-dir", store.folder]
    code, _, err = run_cli(capsys, *argv, "--model", tmp_path / "no-such-model")
    assert code == 2 and not store.exists("nomodel"), err  # (no empty session left behind)


def test_the_knobs_are_set_kept_and_grown_from_in_both_faces(tiny_engine, store):
    import io

    from conftest import IDLE, drive

    from simlab.repl.commands import handle
    from simlab.repl.loom import Loom
    from simlab.repl.screen import LineView
    from simlab.repl.state import Chat

    persona = Persona(name="document", frame="The keeper wrote", mode="document", sampling={"max_tokens": 8})
    session = start_session(store, persona, "faces")
    chat = Chat(
        tiny_engine, store, session, persona, persona.sampling_params(seed=2), LineView(io.StringIO())
    )
    knobs = ("mode sampled", "conf_threshold 0.35", "min_tokens 2", "max_depth 2", "budget 40", "children 2")
    for line in [f"/set {k}" for k in knobs] + ["/set temperature 0.7"]:
        handle(chat, line)
    with pytest.raises(SimlabError, match="from 0 to 1"):
        handle(chat, "/set p_threshold 1.5")
    chat.remember()  # (what --resume goes on with: the sampling, the seed and the knobs)
    assert (
        session.tree.settings["grow"]["budget"] == 40 and session.tree.settings["set"]["temperature"] == 0.7
    )
    handle(chat, "/set")
    assert "autoloom: p_threshold 0.1, conf_threshold 0.35" in chat.view.out.getvalue()
    start = chat.cursor.id
    handle(chat, "/grow")
    made = [n for n in chat.tree.nodes.values() if n.role == "model"]
    assert made and "grew " in chat.view.out.getvalue() and chat.cursor.id == start
    assert all(n.params["temperature"] == 0.7 for n in made)
    # the Loom editor: o orders siblings by probability, G grows from the cursor (in the worker)
    loom = Loom(chat)
    handle(chat, "/set max_depth 4")  # (G goes on from what /grow made, two levels deeper)
    drive(loom, ["o", "G", IDLE, "q"])
    assert loom.order == "cumulative" and len(
        [n for n in chat.tree.nodes.values() if n.role == "model"]
    ) > len(made)
    fork = max(chat.tree.nodes.values(), key=lambda n: len(chat.tree.children(n.id)))
    kids = chat.tree.children(fork.id)
    shown = [n for n, _ in loom.tree_lines() if n in {k.id for k in kids}]
    by_probability = sorted(kids, key=lambda n: -sum(n.logprobs))
    assert len(kids) >= 2 and shown == [n.id for n in by_probability]
