"""The block multiverse (engine.multiverse, `simlab multiverse`): every block above the cutoff, each
block's probability the product of its tokens' conditional probabilities as one sequence alone
gives them, under the sampler's settings or the model's own distribution."""

import json

import pytest
import torch
from conftest import run_cli, two_personas

from simlab.engine.multiverse import distribution, grow
from simlab.engine.params import SamplingParams

PROMPT = "The keeper wrote in his log"


def one_sequence(engine, prompt: list[int], ids: tuple, params, raw) -> list[float]:
    """Each token's conditional probability, from one forward of the prompt and the tokens alone."""
    full = prompt + list(ids)
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([full])).logits[0]
    return [
        float(distribution(logits[len(prompt) - 1 + k], full[: len(prompt) + k], params, raw)[t])
        for k, t in enumerate(ids)
    ]


@pytest.mark.parametrize("raw, cutoff, depth", [(False, 0.01, 4), (True, 0.003, 2)])
def test_every_block_above_the_cutoff_with_its_exact_probability(tiny_engine, raw, cutoff, depth):
    # (the tiny random model's own distribution is nearly flat over 400 tokens: raw, one level)
    params = SamplingParams(temperature=0.5, top_p=0.9, top_k=5, repetition_penalty=1.2)
    prompt = tiny_engine.encode(PROMPT)
    universe = grow(
        tiny_engine, prompt, params, depth=depth, cutoff=cutoff, raw=raw, rows=3
    )  # (batches of 3)
    assert len(universe.covered) >= (1 if raw else 3) and universe.passes > (1 if raw else 3)
    stack, seen = [universe.root], 0
    while stack:
        block = stack.pop()
        stack.extend(block.children)
        if block is universe.root:
            continue
        seen += 1
        conditionals = one_sequence(tiny_engine, prompt, block.ids, params, raw)
        product = 1.0
        for q in conditionals:
            product *= q
        assert block.p == pytest.approx(product, rel=1e-5) and block.p >= cutoff  # (the issue: to 1e-5)
        assert block.conditional == pytest.approx(conditionals[-1], rel=1e-5)
        assert [c.p for c in block.children] == sorted((c.p for c in block.children), reverse=True)
    # nothing above the cutoff is left out: at depth 1, exactly the tokens of probability >= cutoff
    first = one_sequence(tiny_engine, prompt, (), params, raw)  # (no tokens: the next one's distribution)
    with torch.inference_mode():
        logits = tiny_engine.model(input_ids=torch.tensor([prompt])).logits[0, -1]
    q = distribution(logits, prompt, params, raw)
    assert first == [] and {b.ids[0] for b in universe.root.children} == set(
        torch.nonzero(q >= cutoff).flatten().tolist()
    )
    assert universe.covered[0] == pytest.approx(sum(b.p for b in universe.root.children))
    assert seen == sum(1 for _ in universe.leaves()) + sum(1 for b in _all(universe.root) if b.children) - 1


def test_greedy_is_one_path_the_sampler_would_take(tiny_engine):
    params = SamplingParams(temperature=0, repetition_penalty=1.3, max_new_tokens=5)
    prompt = tiny_engine.encode(PROMPT)
    universe = grow(tiny_engine, prompt, params, depth=5, cutoff=0.5)
    [leaf] = universe.leaves()
    [reply] = tiny_engine.generate(prompt, params)
    assert list(leaf.ids) == reply.token_ids[:5] and leaf.p == 1.0 and universe.covered == [1.0] * 5


def _all(block):
    yield block
    for child in block.children:
        yield from _all(child)


def test_the_command_draws_blocks_and_writes_json(capsys, tiny_dir):
    sharp = ["--temperature", "0.5", "--top-k", "5"]  # (the tiny random model is nearly flat)
    code, out, err = run_cli(
        capsys, "multiverse", "--text", PROMPT, "--model", tiny_dir, "--depth", "3", "--json", *sharp
    )
    assert code == 0, err
    tree = json.loads(out)
    assert tree["depth"] == 3 and tree["blocks"] and tree["covered"][0] <= 1.0 + 1e-9
    top = tree["blocks"][0]
    assert set(top) == {"n", "ids", "token", "text", "p", "conditional", "children"} and top["p"] >= 0.01
    assert top["n"] == 1 and (not top["children"] or top["children"][0]["n"] == 2)  # (as drawn: --keep N)
    code, out, _ = run_cli(
        capsys,
        "multiverse",
        "--text",
        PROMPT,
        "--model",
        tiny_dir,
        "--depth",
        "2",
        "--raw",
        "--cutoff",
        "0.002",
    )
    assert (
        code == 0
        and "covers " in out
        and "the model's own distribution" in out
        and "%" in out.splitlines()[0]
    )
    server = ["--backend", "openai", "--base-url", "http://127.0.0.1:9/v1"]
    for flags, wanted in (
        (["--depth", "0"], "give 1 to 64 tokens"),
        (["--cutoff", "2"], "at most 1"),
        (server, "a multiverse"),
    ):
        code, _, err = run_cli(capsys, "multiverse", "--text", PROMPT, "--model", tiny_dir, *flags)
        assert code == 2 and wanted in err and len(err.strip().splitlines()) == 1


# -- a session node's multiverse: saved beside it, a block kept as a reply, replayed -----------------
SHARP = ["--temperature", "0.5", "--top-k", "5"]  # (the tiny random model is nearly flat)


def _chat(store):
    from simlab.persona.schema import Persona
    from simlab.turns import start_session

    session = start_session(store, Persona(name="duo", frame="Two talk.\n\n", user="Ann", model="Bo"), "s")
    user = session.add_child(session.tree.cursor, "user", "Where is the keeper?", speaker="Ann")
    session.goto(user.id)
    session.close()
    return user


def test_a_session_nodes_multiverse_is_saved_beside_it_and_a_kept_block_replays(
    capsys, store, tiny_dir, tmp_path
):
    user = _chat(store)
    folder = ["--sessions-dir", store.folder, "--model", tiny_dir]
    code, out, err = run_cli(capsys, "multiverse", "s", "--depth", "3", *SHARP, *folder)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].lstrip().startswith("1 ") and "%" in lines[0] and "saved in s" in out
    # the record is in the session file, read back as it was drawn
    session = store.open("s", read_only=True)
    [saved] = session.tree.multiverses[user.id]
    assert saved["node"] == user.id and saved["speaker"] == "Bo" and saved["params"]["top_k"] == 5
    from simlab.session import multiverse as sm

    assert sm.drawn(saved, numbered=True) == lines[: len(sm.rows(sm.tree(saved))) + 1]
    session.close()
    # its probabilities are those of the reply's own prompt, one sequence at a time
    from simlab.config import Settings
    from simlab.engine.local import Engine
    from simlab.frame.render import reply_prompt
    from simlab.models.load import load_model

    engine = Engine(load_model(str(tiny_dir), Settings()))
    session = store.open("s", read_only=True)
    prompt = engine.encode(reply_prompt(session.tree.path(user.id), "Bo"))
    session.close()
    deepest = max(sm.rows(sm.tree(saved)), key=lambda b: (len(b.ids), b.p))
    params = SamplingParams(temperature=0.5, top_k=5)
    product = 1.0
    for q in one_sequence(engine, prompt, deepest.ids, params, False):
        product *= q
    assert deepest.p == pytest.approx(product, rel=1e-5) and saved["prompt_tokens"] == len(prompt)
    # keep the deepest block: a reply chosen, not sampled, with its tokens and log-probabilities
    k = sm.rows(sm.tree(saved)).index(deepest) + 1
    code, out, err = run_cli(capsys, "multiverse", "s", "--keep", str(k), *folder)
    assert code == 0 and out.startswith(f"kept block {k} as "), err
    session = store.open("s", read_only=True)
    [kept] = session.tree.children(user.id)
    assert kept.origin == "chosen" and kept.token_ids == deepest.ids and kept.speaker == "Bo"
    assert kept.forced["choice"] == "multiverse" and kept.forced["p"] == pytest.approx(deepest.p)
    assert kept.forced["tokens"] == len(deepest.ids) and len(kept.logprobs) == len(deepest.ids)
    assert kept.params is None and kept.seed is None and session.tree.cursor == kept.id  # (nothing drawn)
    from simlab.session.views import node_marks

    assert node_marks(kept) == "◆"
    session.close()
    code, out, _ = run_cli(capsys, "multiverse", "s", "--node", user.id, "--keep", str(k), *folder)
    assert code == 0 and f"block {k} was kept already as" in out  # (kept once)
    with store.open("s", read_only=True) as session:
        assert len(session.tree.children(user.id)) == 1
    # replay reads it again rather than sampling it; a reply sampled under it replays exactly
    params = SamplingParams(temperature=0.7, seed=3, max_new_tokens=6)
    with store.open("s") as session:
        user2 = session.add_child(kept.id, "user", "And then?", speaker="Ann")
        from simlab.turns import sample_replies

        [reply] = sample_replies(engine, session, user2.id, params)
        session.goto(reply.id)
    code, out, err = run_cli(capsys, "replay", "s", "--sessions-dir", store.folder)  # (its model)
    assert code == 0, out + err
    assert "kept from a multiverse" in out and "log-probabilities the same" in out
    assert "reproduced 1/1 replies exactly; 1/1 kept blocks read the same" in out
    # a kept block whose record no longer matches (another model, say) is told, exit 1
    with store.open("s") as session:
        changed = {**kept.to_record(), "id": "f" * 32, "logprobs": [lp - 0.5 for lp in kept.logprobs]}
        from simlab.session.tree import Node

        session.add(Node.from_record(changed))
        session.goto("f" * 32)
    code, out, _ = run_cli(capsys, "replay", "s", "--sessions-dir", store.folder)
    assert code == 1 and "log-probabilities differ from token 0" in out
    # replayed as a branch with another seed, the branch forks at the sampled reply (under the block);
    # under another persona, the kept block is copied as chosen, read under the new frame
    code, out, err = run_cli(capsys, "replay", "s", "--node", reply.id, "--seed", "9", *folder[:2])
    assert code == 0, err
    with store.open("s", read_only=True) as session:
        branch = session.tree.path(session.tree.cursor)
        assert [n.origin for n in branch[-3:]] == ["chosen", "typed", "replayed"] and branch[-3] == kept
    persona, _ = two_personas(tmp_path)
    code, out, err = run_cli(capsys, "replay", "s", "--node", reply.id, "--persona", persona, *folder[:2])
    assert code == 0, err
    with store.open("s", read_only=True) as session:
        branch = session.tree.path(session.tree.cursor)
        copied = branch[-3]
    assert branch[0].text == "A chat.\n\n"
    assert [n.origin for n in branch[-3:]] == ["chosen", "replayed", "replayed"]
    assert copied.token_ids == kept.token_ids and copied.forced["multiverse"] == saved["id"]
    assert copied.speaker == "Bot" and copied.logprobs != kept.logprobs  # (read after another frame)
    # a path whose only reply is a kept block replays under another persona too
    code, out, err = run_cli(capsys, "replay", "s", "--node", kept.id, "--persona", persona, *folder[:2])
    assert code == 0 and "new branch of 2 node(s)" in out, err  # (the user turn, the kept block)


def test_session_flags_are_checked_in_one_line(capsys, store, tiny_dir):
    _chat(store)
    folder = ["--sessions-dir", store.folder, "--model", tiny_dir]
    for argv, wanted in (
        (["s", "--text", "x"], "one of the two"),
        ([], "one of the two"),
        (["--text", "x", "--keep", "1"], "need a session"),
        (["s", "--keep", "1"], "no multiverse saved at"),
        (["s", "--keep", "1", "--json"], "it grows nothing"),
        (["s", "--raw", "--temperature", "0.5"], "--temperature would change nothing"),
        (["nope"], "nope"),
    ):
        code, _, err = run_cli(capsys, "multiverse", *argv, *folder)
        assert code == 2 and wanted in err and len(err.strip().splitlines()) == 1, err
    code, _, _ = run_cli(capsys, "multiverse", "s", "--depth", "2", *SHARP, *folder)
    code, _, err = run_cli(capsys, "multiverse", "s", "--keep", "999", *folder)
    assert code == 2 and "give a block number from 1 to" in err


def test_a_block_past_a_replys_end_is_not_kept_in_a_chat(store, tiny_engine):
    from simlab.errors import SimlabError
    from simlab.turns.multiverse import keep

    user = _chat(store)
    session = store.open("s")
    ids = tuple(tiny_engine.encode(" Here.\n\nAnn: and"))  # (runs into the next turn's label)
    saved = {"id": "m", "node": user.id, "depth": len(ids), "cutoff": 0.01, "speaker": "Bo", "blocks": []}
    level = saved["blocks"]
    for token in ids:
        child = [token, 0.5, tiny_engine.tokenizer.decode([token]), []]
        level.append(child)
        level = child[3]
    with pytest.raises(SimlabError, match="runs past where a reply ends"):
        keep(tiny_engine, session, saved, ids)
    kept = keep(tiny_engine, session, saved, ids[:2])  # (before it: kept)
    assert kept.origin == "chosen" and "Ann:" not in kept.text
    session.close()
