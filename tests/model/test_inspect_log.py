"""Inspect interop (simlab/compare/inspect_log.py): a compare run written as an Inspect eval log that
inspect_ai's own reader and `inspect log schema` accept, and logs that inspect_ai itself wrote read
back by `compare --from-inspect` for the paired statistics."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli, two_personas

inspect_log = pytest.importorskip("inspect_ai.log", reason="inspect-ai (a test dependency) is not installed")
jsonschema = pytest.importorskip("jsonschema")


def test_a_compare_run_is_an_inspect_log(capsys, tmp_path, tiny_dir):
    a, b = two_personas(tmp_path)
    log_path = tmp_path / "r" / "run.json"
    code, _, err = run_cli(
        capsys, "compare", "--personas", f"{a},{b}", "--turn", "Hello", "--turn", "And then?",
        "--samples", "5", "--max-tokens", "6", "-m", str(tiny_dir), "--sessions-dir", tmp_path / "s",
        "--report-dir", tmp_path / "r", "--inspect-log", log_path,
    )  # fmt: skip
    assert code == 0, err
    log = inspect_log.read_eval_log(str(log_path))
    assert log.status == "success" and len(log.samples) == 10
    first = log.samples[0]
    assert (first.id, first.epoch) == ("a", 1) and first.metadata["variant"] == "a"
    assert [m.role for m in first.messages] == ["user", "assistant", "user", "assistant"]
    assert first.output.completion == first.messages[-1].text
    assert "logprob" in first.scores and first.metadata["seeds"][0] == first.metadata["seed"]
    from simlab.session.store import SessionStore

    with SessionStore(tmp_path / "s").open("compare-a-b", read_only=True) as session:
        node = session.tree.get(first.metadata["nodes"][-1])
        assert node.text == first.output.completion
    scores = {s.name: s for s in log.results.scores}
    logprob = scores["logprob/a"].metrics
    assert logprob["ci_low"].value <= logprob["mean"].value <= logprob["ci_high"].value
    assert "logprob/b-a" in scores and scores["logprob/b-a"].metadata["difference"] == ["b", "a"]
    schema = json.loads(
        subprocess.run(
            [str(Path(sys.executable).parent / "inspect"), "log", "schema"], capture_output=True, check=True
        ).stdout
    )
    jsonschema.validate(json.loads(log_path.read_text()), schema)  # the schema inspect itself prints

    code, _, err = run_cli(  # the same sweep again (nothing sampled), into a folder: named as Inspect does
        capsys, "compare", "--personas", f"{a},{b}", "--turn", "Hello", "--turn", "And then?",
        "--samples", "5", "--max-tokens", "6", "-m", str(tiny_dir), "--sessions-dir", tmp_path / "s",
        "--report-dir", tmp_path / "r", "--inspect-log", f"{tmp_path / 'logs'}/",
    )  # fmt: skip
    assert code == 0, err
    assert "inspect view --log-dir" in err
    [listed] = inspect_log.list_eval_logs(str(tmp_path / "logs"))  # what inspect view lists
    assert inspect_log.read_eval_log(listed).eval.task == "simlab/compare-a-b"
    code, out, err = run_cli(capsys, "compare", "--from-inspect", log_path)  # and read back
    assert code == 0, err
    assert "2 group(s): a (5 samples), b (5 samples)" in out
    assert any(line.startswith("logprob") and "5 pairs" in line for line in out.splitlines())


def _log_of(model: str, grades: list[str], epochs: int = 2):
    from inspect_ai.log import EvalLog, EvalSample, EvalSpec
    from inspect_ai.log._log import EvalConfig, EvalDataset
    from inspect_ai.scorer import Score

    samples = [
        EvalSample(
            id=f"q{i}", epoch=e + 1, input=f"question {i}", target="A", scores={"match": Score(value=g)}
        )
        for i, g in enumerate(grades)
        for e in range(epochs)
    ]
    spec = EvalSpec(
        created="2026-12-06T12:00:00+00:00", task="quiz", model=model, config=EvalConfig(epochs=epochs),
        dataset=EvalDataset(name="quiz", samples=len(grades)),
    )  # fmt: skip
    return EvalLog(eval=spec, samples=samples, status="success")


def test_logs_inspect_wrote_are_compared_paired(capsys, tmp_path):
    from inspect_ai.log import write_eval_log

    write_eval_log(_log_of("openai/a", ["C", "I", "C", "I", "I", "C"]), tmp_path / "a.eval", format="eval")
    write_eval_log(_log_of("openai/b", ["C", "C", "C", "C", "I", "C"]), tmp_path / "b.json", format="json")
    # in a process of its own: inspect_ai, imported here, teaches zipfile zstd (its .eval members)
    done = subprocess.run(
        [sys.executable, "-m", "simlab", "compare", "--from-inspect", tmp_path / "a.eval",
         tmp_path / "b.json"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    rows = [line for line in out.splitlines() if line.startswith("match")]
    assert "0.5" in rows[0] and "12" in rows[0]  # C/I as 1/0: 6 of 12, a rate with its interval
    assert "+0.333" in rows[1] and "12 pairs" in rows[1]  # paired by (id, epoch)
    code, out, _ = run_cli(capsys, "compare", "--from-inspect", tmp_path / "a.eval", "--json")
    assert json.loads(out)["rows"][0]["estimate"]["n"] == 12


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "no such file"),
        ("{not json", "not an Inspect log"),
        ('{"samples": []}', "no 'eval' record"),
        (
            '{"eval": {}, "samples": [{"id": 1, "epoch": "x", "scores": {}}]}',
            "epoch 'x' is not a whole number",
        ),
    ],
)
def test_a_bad_log_is_one_line(capsys, tmp_path, content, needle):
    path = tmp_path / "x.json"
    if content is not None:
        path.write_text(content)
    code, _, err = run_cli(capsys, "compare", "--from-inspect", path)
    assert code == 2 and needle in err and "Traceback" not in err


def test_a_score_that_is_not_a_number_is_left_out_and_said(capsys, tmp_path):
    samples = [
        {"id": "q", "epoch": e, "scores": {"grade": {"value": v}}} for e, v in ((1, 0.5), (2, "high"), (3, 1))
    ]
    (tmp_path / "log.json").write_text(json.dumps({"eval": {"model": "m"}, "samples": samples}))
    code, out, err = run_cli(capsys, "compare", "--from-inspect", tmp_path / "log.json")
    assert code == 0, err
    assert "note: m: 1 value(s) of grade were not numbers" in out
    assert any(line.startswith("grade") and "   2 " in line for line in out.splitlines())
    code, out, _ = run_cli(capsys, "compare", "--from-inspect", tmp_path / "log.json", "--json")
    assert json.loads(out)["rows"][0]["estimate"]["low"] == 0.0  # (scores never below 0: floored there)


@pytest.mark.parametrize(
    "given, needle",
    [("r/run.md", "give a FILE.json"), ("r/interview-stage-play.md", "give a FILE.json"),
     ("r/interview-stage-play.json", None)],
)  # fmt: skip
def test_the_inspect_log_path_is_checked_before_sampling(capsys, tmp_path, given, needle):
    code, _, err = run_cli(
        capsys, "compare", "--personas", "interview,stage-play", "--turn", "Hi", "--report-dir",
        tmp_path / "r", "--sessions-dir", tmp_path / "s", "--inspect-log", tmp_path / given,
        "-m", tmp_path / "no-such-model",
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err
    if needle:
        assert needle in err and not (tmp_path / "s").exists()
    else:  # a good path: on to the next mistake (the model), its folder made
        assert "no-such-model" in err and (tmp_path / "r").is_dir()
