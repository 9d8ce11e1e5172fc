"""compare --judge MODEL --rubric FILE (simlab/compare/judge.py): rubric questions scored by a judge
model's teacher-forced probability of the answer labels, saved as notes, reused, replayed, reported
with intervals, and checked against the judge model's own forward pass."""

import json
import math

import pytest
import torch
from conftest import run_cli, two_personas
from probe_server import ProbeServer
from transformers import AutoModelForCausalLM, AutoTokenizer

from simlab.session.store import SessionStore

RUBRIC = """\
hostile:
  question: Does the speaker sound hostile?
warmth:
  question: How warm is the speaker, from 1 to 3?
  labels: ["1", "2", "3"]
"""


def sweep(capsys, tmp_path, tiny_dir, *extra):
    a, b = two_personas(tmp_path)
    (tmp_path / "rubric.yaml").write_text(RUBRIC)
    return run_cli(
        capsys, "compare", "--personas", f"{a},{b}", "--turn", "Hello", "--samples", "4", "--max-tokens", "5",
        "-m", str(tiny_dir), "--dtype", "float32", "--sessions-dir", tmp_path / "s", "--report-dir",
        tmp_path / "r", "--rubric", tmp_path / "rubric.yaml", *extra,
    )  # fmt: skip


def notes(tmp_path):
    with SessionStore(tmp_path / "s").open("compare-a-b", read_only=True) as session:
        return [n for n in session.tree.nodes.values() if n.speaker == "judge"]


def test_the_judge_scores_saves_reuses_and_reports(capsys, tmp_path, tiny_dir):
    code, out, err = sweep(capsys, tmp_path, tiny_dir, "--judge", str(tiny_dir), "--json")
    assert code == 0, err
    judge = json.loads(out)["judge"]
    assert set(judge["variants"]) == {"a", "b"} and set(judge["variants"]["a"]) == {"hostile", "warmth"}
    assert all(0 < p < 1 for p in judge["values"]["a"]["hostile"])
    assert all(1 <= w <= 3 for w in judge["values"]["b"]["warmth"])
    assert judge["differences"]["b"]["hostile"]["n"] == 4
    saved = notes(tmp_path)
    assert len(saved) == 16  # 2 variants x 4 samples x 2 questions
    code, out, err = sweep(
        capsys, tmp_path, tiny_dir, "--judge", str(tiny_dir), "--inspect-log", tmp_path / "l.json"
    )
    assert code == 0, err
    assert len(notes(tmp_path)) == 16  # reused, not scored twice
    assert "Judge " in out and "hostile" in out  # the table beside the others
    log = json.loads((tmp_path / "l.json").read_text())
    assert "judge:hostile" in log["samples"][0]["scores"]
    assert any(s["name"] == "judge:warmth/b-a" for s in log["results"]["scores"])


def test_a_score_is_the_judge_models_own_probability(capsys, tmp_path, tiny_dir):
    code, _, err = sweep(capsys, tmp_path, tiny_dir, "--judge", str(tiny_dir))
    assert code == 0, err
    note = next(n for n in notes(tmp_path) if n.judged["metric"] == "hostile")
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    prompt = note.judged["prompt"]
    logprob = {}
    for label in ("Yes", "No"):
        before, ids = tok(prompt)["input_ids"], tok(prompt + " " + label)["input_ids"]
        with torch.no_grad():
            lp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        logprob[label] = sum(float(lp[k - 1, ids[k]]) for k in range(len(before), len(ids)))
    p = math.exp(logprob["Yes"]) / (math.exp(logprob["Yes"]) + math.exp(logprob["No"]))
    assert note.judged["score"] == pytest.approx(p, abs=1e-5)
    code, out, _ = run_cli(
        capsys, "replay", "compare-a-b", "--node", note.id, "--sessions-dir", tmp_path / "s"
    )
    assert code == 0 and "every label's log-probability the same" in out, out
    replay = ("replay", "compare-a-b", "--node", note.id, "--sessions-dir", tmp_path / "s", "--on")
    with ProbeServer("vllm") as server:  # the same prompt judged by another engine
        code, out, err = run_cli(capsys, *replay, server.url)
        assert code == 0 and f"judged hostile again on {server.url}: score" in out, out + err
    with ProbeServer("llama-server") as server:
        code, _, err = run_cli(capsys, *replay, server.url)
        assert code == 2 and "gives no prompt log-probabilities" in err


def test_a_judge_on_a_server(capsys, tmp_path, tiny_dir):
    with ProbeServer("vllm") as server:  # echo with logprobs
        code, out, err = sweep(capsys, tmp_path, tiny_dir, "--judge", server.url, "--json")
        assert code == 0, err
        assert json.loads(out)["judge"]["model"] == "words"
        assert notes(tmp_path)[0].backend["scoring"] == "echo"
    (tmp_path / "2").mkdir()
    with ProbeServer("llama-server") as server:  # no echo
        code, _, err = sweep(capsys, tmp_path / "2", tiny_dir, "--judge", server.url)
    assert code == 2 and "gives no prompt log-probabilities" in err
    assert not (tmp_path / "2" / "s").exists()  # said before anything was sampled


@pytest.mark.parametrize(
    "rubric, needle",
    [
        ("hostile: {labels: [Yes, No]}\n", "rubric.yaml:1: hostile: give question: TEXT"),
        ("hostile: {question: Q, labels: [Yes]}\n", "labels: give two or more different answers"),
        ("hostile: {question: Q, scale: 5}\n", "unknown key 'scale'"),
        ('hostile: {question: Q, template: "{transcript} {bogus}"}\n', "template: KeyError 'bogus'"),
        ('hostile: {question: Q, template: "{transcript} {"}\n', "write a brace as {{ or }}"),
        ('hostile: {question: Q, labels: ["1", "2", "two"]}\n', "more than two answers make a scale"),
    ],
)
def test_a_bad_rubric_is_one_line_before_anything_loads(capsys, tmp_path, rubric, needle):
    (tmp_path / "rubric.yaml").write_text(rubric)
    code, _, err = run_cli(
        capsys,
        "compare",
        "--personas",
        "interview,stage-play",
        "--turn",
        "Hi",
        "--judge",
        "embedded",
        "--rubric",
        tmp_path / "rubric.yaml",
    )
    assert code == 2 and needle in err and "Traceback" not in err
