"""`steer derive`: the per-block directions, their held-out AUC and the PCA aggregate, recomputed by
hand from the saved replies with transformers' own hidden states; and the command end to end."""

import numpy as np
import pytest
from conftest import run_cli, tiny_llama_style

from simlab.config import Settings
from simlab.engine.local import Engine
from simlab.frame.render import reply_prompt
from simlab.models.load import load_model
from simlab.persona.schema import Persona
from simlab.session.tokens import own_tokens
from simlab.steer import derive
from simlab.steer.vector import read

A = Persona(name="calm", frame="A quiet talk.\n\n", user="Ann", model="Bo")
B = Persona(name="loud", frame="SHOUTING MATCH!!!\n\n", user="Ann", model="Max")
TURNS = ["Where were you?", "What now?", "Why so late?"]


@pytest.fixture(scope="module")
def llama(tiny_dir, tmp_path_factory):
    folder = tiny_llama_style(tmp_path_factory.mktemp("llama"), "llama", tiny_dir)
    return Engine(load_model(str(folder), Settings(device="cpu", dtype="float32")))


@pytest.fixture(scope="module")
def derived(llama, tmp_path_factory):
    from simlab.session.store import SessionStore

    store = SessionStore(tmp_path_factory.mktemp("sessions"))
    session = store.create("d")
    params = A.sampling_params(seed=3, max_new_tokens=8, temperature=1.0)
    found = derive.sample_both(llama, session, (A, B), TURNS, params, 2)
    return session, found


def by_hand(engine, session, found):
    """Each saved reply again, from the session: its prompt as the reply read it, its own tokens,
    and transformers' hidden_states[N + 1] (block N's output) at them."""
    import torch

    rows = []
    for node_id in found.nodes:
        node = session.tree.get(node_id)
        path = session.tree.path(node.parent)
        ids = engine.encode(reply_prompt(path, node.speaker))
        texts = [engine.tokenizer.decode([t]) for t in node.token_ids]
        own = own_tokens(texts, node.text, " ")
        full = ids + list(node.token_ids[:own])
        with torch.inference_mode():
            states = engine.model(input_ids=torch.tensor([full]), output_hidden_states=True).hidden_states
        rows.append([states[b + 1][0, len(ids) :].numpy() for b in range(2)])  # blocks 0 and 1
    return rows


def test_the_directions_are_bs_mean_minus_as_over_replies_as_computed_by_hand(llama, derived):
    session, found = derived
    assert len(found.nodes) == 2 * len(TURNS) * 2 and set(found.persona) == {0, 1}
    rows = by_hand(llama, session, found)
    persona, turn = np.array(found.persona), np.array(found.turn)
    results = derive.directions(found, "mean")
    for block in (0, 1):  # (the last block's hidden state is after the final norm: not a block output)
        means = {p: np.mean([r[block].mean(0) for r, q in zip(rows, persona) if q == p], 0) for p in (0, 1)}
        np.testing.assert_allclose(results[block].direction, means[1] - means[0], rtol=1e-4, atol=1e-6)
        norms = np.concatenate([np.linalg.norm(r[block], axis=1) for r in rows])
        assert results[block].relative_norm == pytest.approx(
            np.linalg.norm(means[1] - means[0]) / norms.mean()
        )
        aucs = []  # two folds by turn: made on turns 1 (and 3), judged on turn 2, and the reverse
        for held_turns in ([0, 2], [1]):
            held = np.isin(turn, held_turns)
            made = {
                p: np.mean([r[block].mean(0) for r, q, h in zip(rows, persona, held) if q == p and not h], 0)
                for p in (0, 1)
            }
            unit = (made[1] - made[0]) / np.linalg.norm(made[1] - made[0])
            a = np.concatenate([r[block] @ unit for r, q, h in zip(rows, persona, held) if h and q == 0])
            b = np.concatenate([r[block] @ unit for r, q, h in zip(rows, persona, held) if h and q == 1])
            aucs.append((b[:, None] > a[None, :]).mean() + 0.5 * (b[:, None] == a[None, :]).mean())
        assert results[block].auc == pytest.approx(np.mean(aucs))
        assert 0 <= results[block].auc <= 1


def test_the_pca_direction_is_the_paired_differences_first_component_signed_toward_b(derived):
    session, found = derived
    mean = derive.directions(found, "mean")
    pca = derive.directions(found, "pca")
    persona = np.array(found.persona)
    for block in range(3):
        per = {
            (q, t, k): r[block].mean(0) for r, q, t, k in zip(found.blocks, persona, found.turn, found.sample)
        }
        diffs = np.array([per[(1, t, k)] - per[(0, t, k)] for (q, t, k) in per if q == 0])
        component = np.linalg.svd(diffs - diffs.mean(0))[2][0]
        v = pca[block].direction
        assert abs(abs(v @ component) - np.linalg.norm(v)) < 1e-4 * np.linalg.norm(v)  # along the component
        assert v @ mean[block].direction > 0  # B above A
        assert v @ component * (component @ mean[block].direction) > 0
        np.testing.assert_allclose(np.linalg.norm(v), abs(component @ mean[block].direction), rtol=1e-4)


def test_derive_end_to_end_writes_a_vector_and_a_session(capsys, tmp_path, tiny_dir):
    turns = tmp_path / "turns.txt"
    turns.write_text("Where were you?\n\nWhat now?\n")
    model = tiny_llama_style(tmp_path / "m", "llama", tiny_dir)  # (a context of 256 tokens)
    calm = "name: calm\nframe: A quiet talk.\nspeakers: {user: Ann, model: Bo}\n"
    (tmp_path / "calm.yaml").write_text(calm)
    (tmp_path / "loud.yaml").write_text("name: loud\nframe: SHOUTING!\nspeakers: {user: Ann, model: Max}\n")
    args = ["steer", "derive", "v", "--from", tmp_path / "calm.yaml", "--to", tmp_path / "loud.yaml"]
    args += ["--model", model]
    args += ["--turns", turns, "--samples", "2", "--max-tokens", "6", "--sessions-dir", tmp_path / "s"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert out.splitlines()[0].startswith("block") and "    0 " in out and "(not kept)" in out
    assert "saved v (2 blocks)" in out and "session steer-v" in out
    code, out, _ = run_cli(capsys, "steer", "show", "v", "--json")
    import json

    shown = json.loads(out)
    assert shown["meta"]["from"] == "calm" and shown["meta"]["to"] == "loud"
    assert shown["meta"]["session"] == "steer-v" and list(shown["norms"]) == ["1", "2"]
    assert read(tmp_path / "simlab-home" / "steer" / "v.gguf").layers == [1, 2]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "exists" in err  # the name is taken: refused before sampling
    code, _, err = run_cli(capsys, *args[:2], "w", *args[3:], "--layers", "0-1")
    assert code == 2 and "keep blocks from 1 to 2" in err
    same = [*args[:2], "w", "--from", tmp_path / "calm.yaml", "--to", tmp_path / "calm.yaml", *args[7:]]
    code, _, err = run_cli(capsys, *same)
    assert code == 2 and "are the same frame" in err and len(err.strip().splitlines()) == 1


def test_derive_from_contrastive_pairs(capsys, tmp_path, tiny_dir):
    import json

    model = tiny_llama_style(tmp_path / "m", "llama", tiny_dir)
    pairs = tmp_path / "pairs.jsonl"
    lines = [{"positive": f"A happy day {k}", "negative": f"A sad day {k}"} for k in range(4)]
    pairs.write_text("\n".join(json.dumps(line) for line in lines))
    args = ["steer", "derive", "mood", "--pairs", pairs, "--aggregate", "pca", "--model", model]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "saved mood (2 blocks)" in out and "4 pairs" in out
    meta = read(tmp_path / "simlab-home" / "steer" / "mood.gguf").meta
    assert meta["pairs"] == 4 and meta["aggregate"] == "pca" and "from" not in meta
    (tmp_path / "bad.json").write_text('[{"positive": "x"}]')
    code, _, err = run_cli(capsys, "steer", "derive", "w", "--pairs", tmp_path / "bad.json", "--model", model)
    assert code == 2 and 'entry 1 is not {"positive": TEXT, "negative": TEXT}' in err
    code, _, err = run_cli(capsys, "steer", "derive", "w", "--pairs", pairs, "--from", "interview")
    assert code == 2 and "give --from PERSONA_A --to PERSONA_B, or --pairs FILE" in err
