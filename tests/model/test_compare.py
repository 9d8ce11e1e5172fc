"""Compare sweeps on the tiny GPT-2: spec validation, spec -> tree -> report, resume, HTML and JSON."""

import json
import math
import re
from html.parser import HTMLParser

import pytest
from conftest import two_personas

from simlab.cli.main import main
from simlab.compare.spec import build_spec, read_spec
from simlab.compare.stats import analyse
from simlab.compare.sweep import Progress, run_sweep, seed_of
from simlab.errors import SpecError
from simlab.session.store import SessionStore


@pytest.fixture
def personas(tmp_path):
    return two_personas(tmp_path)


def spec_file(tmp_path, personas, samples=3, turns=("hello", "and then?")):
    a, b = personas
    path = tmp_path / "sweep.yaml"
    path.write_text(
        json.dumps(
            {
                "turns": list(turns),
                "samples": samples,
                "seed": 40,
                "sampling": {"max_tokens": 5, "temperature": 1.0},
                "variants": [
                    {"persona": str(a)},
                    {"persona": str(b)},
                    {"persona": str(a), "name": "a-cold", "sampling": {"temperature": 0.3}},
                ],
            }
        )
    )
    return path


def load_spec(path):
    data, lines = read_spec(path)
    return build_spec(data, str(path), lines, default_name=path.stem)


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"variants": ["interview"]}, "turns: give the scripted user turns"),
        ({"turns": ["x"], "variants": []}, "variants: give a list"),
        ({"turns": ["x"], "variants": ["interview", "interview"]}, "used twice"),
        ({"turns": ["x"], "variants": ["nobody"]}, "unknown persona 'nobody'"),
        ({"turns": ["x"], "variants": [{"persona": "interview", "colour": 1}]}, "unknown key 'colour'"),
        ({"turns": ["x"], "variants": ["interview"], "samples": 0}, "samples: must be a whole number >= 1"),
        ({"turns": ["x"], "variants": ["interview"], "sampling": {"top_p": 9}}, "top_p=9 is invalid"),
        ({"turns": ["x"], "variants": ["interview"], "sampling": {"warmth": 1}}, "sampling.warmth: unknown"),
        ({"turns": ["x"], "variants": ["interview"], "temperature": 1}, "temperature: unknown key"),
        ({"turns": ["x"], "variants": ["interview"], "same_sampling": "yes"}, "same_sampling: true or false"),
        (
            {
                "turns": ["x"],
                "same_sampling": True,
                "variants": ["interview", {"persona": "stage-play", "sampling": {"temperature": 1}}],
            },
            "same_sampling gives every variant one sampling",
        ),
    ],
)
def test_bad_specs_are_one_clear_line(data, expected):
    with pytest.raises((SpecError, Exception)) as caught:
        build_spec(data, "spec.yaml")
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_a_yaml_error_names_the_line(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("turns: [hi]\nvariants:\n  - persona: interview\n   bad: indent\n")
    with pytest.raises(Exception, match=r"s\.yaml:4: invalid YAML"):
        load_spec(path)


def test_sweep_spec_to_tree_to_report_with_resume(tmp_path, personas, tiny_engine, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(spec_file(tmp_path, personas))
    store = SessionStore(tmp_path / "sessions")
    engines = lambda model: tiny_engine  # noqa: E731 (every variant on the tiny model)

    class Stop(Exception):
        pass

    def interrupt_after_four(progress, what):
        if progress.sampled >= 4:
            raise Stop()

    with store.create("compare-sweep") as session:
        with pytest.raises(Stop):
            run_sweep(spec, session, engines, Progress(total=18, report=interrupt_after_four))
    first_seeds = [n.seed for n in store.open("compare-sweep", read_only=True).tree.nodes.values() if n.seed]
    assert 4 <= len(first_seeds) < 18
    with store.open("compare-sweep") as session:
        progress = Progress(total=18)
        runs = run_sweep(spec, session, engines, progress)
        assert progress.done == 18 and progress.sampled == 18 - len(first_seeds)  # nothing redone
        tree = session.tree
        models = [n for n in tree.nodes.values() if n.role == "model" and n.seed is not None]
        assert len(models) == 18 and len({(n.persona, n.seed, n.params["temperature"]) for n in models}) == 18
        assert len(tree.roots) == 3 and all(any(t.startswith("variant:") for t in r.tags) for r in tree.roots)
        for run in runs:
            assert len(run.samples) == 3
            for i, sample in enumerate(run.samples):
                assert [r.seed for r in sample] == [seed_of(spec, 0, i), seed_of(spec, 1, i)]
                assert tree.get(tree.get(sample[1].parent).parent).id == sample[0].id  # turn 2 under reply 1
        assert tree.cursor == runs[0].samples[0][-1].id  # where `simlab chat --resume` opens
        b_run = runs[1]
        path = tree.path(b_run.samples[0][1].id)
        assert [n.speaker for n in path[1:]] == ["A", "Q", "A", "Q", "A"]  # greeting, then the turns
    # the CLI on the same spec finds every sample done, and reports on them
    capsys.readouterr()
    code = main(["compare", str(tmp_path / "sweep.yaml"), "--model", str(tiny_engine.info.spec), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [len(v["replies"][1]) for v in json.loads(out)["variants"]] == [3, 3, 3]
    again = store.open("compare-sweep", read_only=True).tree
    assert len(again.nodes) == len(tree.nodes)


def test_report_files_hold_every_sample(tmp_path, personas, tiny_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "compare",
            str(spec_file(tmp_path, personas, samples=4)),
            "--model",
            str(tiny_dir),
            "--report-dir",
            str(tmp_path / "out"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert (
        "Per variant" in out
        and "Difference from a" in out
        and "JSD bits" in out
        and "Cross log-probability" in out
    )
    html_text = (tmp_path / "out" / "sweep.html").read_text()
    texts = []

    class Cells(HTMLParser):
        def handle_data(self, data):
            texts.append(data)

    Cells().feed(html_text)
    body = "".join(texts)
    tree = SessionStore(tmp_path / "sessions").open("compare-sweep", read_only=True).tree
    samples = [n.text for n in tree.nodes.values() if n.role == "model" and n.seed is not None]
    assert len(samples) == 24 and all(s in body for s in samples)
    plots = sum(html_text.count(k) for k in ("<svg", "every sample of every variant:", "no values:"))
    assert plots == 5 and "http" not in html_text.replace("http://www.w3.org/2000/svg", "")
    md = (tmp_path / "out" / "sweep.md").read_text()
    assert "## Turn 2: and then?" in md and md.count("*(seed ") == 24
    assert re.search(r"\*\(seed \d+, (length|stop|eos)\)\*", md)  # each sample with its finish reason
    assert "## Most likely first tokens" in md and "<h2>Most likely first tokens</h2>" in html_text
    assert re.search(r"seed \d+ · (length|stop|eos)", html_text)
    assert max(map(len, out.splitlines())) <= 80  # the terminal tables fit 80 columns
    assert "One sample per variant" in out and out.count("(seed ") == 3  # one per variant


def test_json_and_the_flags_form(tmp_path, personas, tiny_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = personas
    code = main(
        [
            "compare",
            "--personas",
            f"{a},{b}",
            "--turn",
            "hi",
            "--samples",
            "3",
            "--max-tokens",
            "4",
            "--model",
            str(tiny_dir),
            "--json",
            "--name",
            "quick",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert [v["name"] for v in data["variants"]] == ["a", "b"] and data["samples"] == 3
    for v in data["variants"]:
        assert len(v["replies"][0]) == 3 and len(v["values"]["length"]) == 3
        m = v["metrics"]["logprob"]
        assert m["low"] <= m["mean"] <= m["high"]
    assert set(data["cross_logprob"]["a"]) == {"a", "b"} and data["divergence"][0]["jsd_bits"] >= 0
    assert "excludes_zero" in data["differences"]["b"]["length"]
    assert (tmp_path / "reports" / "quick.html").exists()
    code = main(["compare", "--personas", str(a)])
    assert code == 2 and "--turn" in capsys.readouterr().err


def test_metrics_from_a_sweep_agree_with_the_nodes(tmp_path, personas, tiny_engine):
    spec = load_spec(spec_file(tmp_path, personas, samples=3, turns=("hello",)))
    with SessionStore(tmp_path / "s").create("x") as session:
        runs = run_sweep(spec, session, lambda m: tiny_engine)
    analysis = analyse(spec, runs)
    stats = analysis.variants[0]
    assert all(v == 1.0 for v in stats.values["cut_rate"])  # 5 tokens of a random model: cut at max
    assert all(math.isnan(v) for v in stats.values["length"])  # cut replies have no length of their own
    assert stats.estimates["cut_rate"].mean == 1.0 and stats.estimates["cut_rate"].low == pytest.approx(
        0.025 ** (1 / 3)
    )
    logprobs = [lp for s in runs[0].samples for lp in s[0].logprobs]  # no stop string: every token counts
    assert stats.estimates["logprob"].mean == pytest.approx(sum(logprobs) / len(logprobs))


def test_sigterm_stops_a_sweep_that_a_rerun_resumes(tmp_path, personas, tiny_dir):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    spec = spec_file(tmp_path, personas, samples=60)
    argv = [
        sys.executable,
        "-m",
        "simlab",
        "compare",
        str(spec),
        "--model",
        str(tiny_dir),
        "--sessions-dir",
        str(tmp_path / "s"),
        "--report-dir",
        str(tmp_path / "r"),
        "--max-tokens",
        "12",
    ]
    env = {**os.environ, "SIMLAB_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    for line in child.stderr:  # progress lines, one per tenth (stderr is not a terminal)
        if re.search(r" [1-9][0-9]*/[0-9]+ samples", line):  # some done (the first line says 0/N)
            break
    time.sleep(0.5)
    child.send_signal(signal.SIGTERM)
    rest = child.stderr.read()
    assert child.wait(timeout=120) == 130 and "Traceback" not in rest
    assert "run the same command again to resume" in rest
    [session] = (tmp_path / "s").glob("compare-*.jsonl")
    before = sum(
        r["type"] == "node" and r["node"].get("origin") == "sampled"
        for r in map(json.loads, session.read_text().splitlines())
    )
    assert 0 < before < 3 * 60 * 2
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    seeds = [
        (r["node"]["parent"], r["node"]["seed"])
        for r in map(json.loads, session.read_text().splitlines())
        if r["type"] == "node" and r["node"].get("origin") == "sampled"
    ]
    assert (
        len(seeds) == len(set(seeds)) == 3 * 60 * 2
    )  # 3 variants x 60 samples x 2 turns, each once: nothing lost, nothing twice


def test_samples_auto_samples_on_until_the_interval_is_narrow_enough(
    tmp_path, personas, tiny_dir, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    a, b = personas
    argv = [
        "compare",
        "--personas",
        f"{a},{b}",
        "--turn",
        "hi",
        "--max-tokens",
        "4",
        "--model",
        str(tiny_dir),
    ]
    argv += ["--json", "--name", "auto", "--samples", "auto", "--metric", "logprob"]
    code = main([*argv, "--width", "50"])  # any interval is narrower: the first round is enough
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert data["samples"] == 8 and "every interval is narrow enough" in data["notes"][0]
    code = main([*argv, "--width", "0.0001", "--max-samples", "13"])  # never narrow enough: up to the most
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert data["samples"] == 13 and "the most, 13" in data["notes"][0]
    assert all(len(v["values"]["logprob"]) == 13 for v in data["variants"])
    assert "samples: auto: n = 8" in err and "samples: auto: n = 13" in err
    tree = SessionStore(tmp_path / "sessions").open("compare-auto", read_only=True).tree
    assert (
        sum(n.role == "model" and n.seed is not None for n in tree.nodes.values()) == 2 * 13
    )  # kept, extended
    bad_flags = (
        (["--samples", "auto"], "needs `until: {width: W}`"),
        (["--width", "3"], "go with --samples auto"),
        (["--samples", "lots"], "give a whole number >= 1, or auto"),
        (["--samples", "0"], "give a whole number >= 1, or auto"),
    )
    for bad, needle in bad_flags:
        assert main([*argv[:-4], *bad]) == 2 and needle in capsys.readouterr().err


def test_an_interrupt_while_scoring_says_every_sample_is_saved(
    tmp_path, personas, tiny_dir, capsys, monkeypatch
):
    import simlab.compare.stats as stats

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stats, "analyse", interrupted)
    argv = [
        "compare",
        str(spec_file(tmp_path, personas, samples=2, turns=("hello",))),
        "--model",
        str(tiny_dir),
    ]
    code = main([*argv, "--sessions-dir", str(tmp_path / "s"), "--report-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 130 and "interrupted while scoring; every sample is saved" in err
    assert not (tmp_path / "r").exists()


def test_personas_that_sample_differently_are_named_and_same_sampling_makes_only_the_framing_differ():
    from simlab.compare.spec import sampling_differs

    mixed = build_spec({"turns": ["Where?"], "variants": ["interview", "stage-play"]}, "spec.yaml")
    note = sampling_differs(mixed)
    assert "stage-play temperature 0.85, max_new_tokens 100 (against interview's 0.8, 120)" in note
    assert "--same-sampling" in note
    same = build_spec(
        {"turns": ["Where?"], "variants": ["interview", "stage-play"], "same_sampling": True,
         "sampling": {"top_k": 40}},
        "spec.yaml",
    )  # fmt: skip
    first, second = (v.params for v in same.variants)
    assert sampling_differs(same) is None and second.temperature == 0.8 and second.top_k == 40
    assert second.stop == mixed.variants[1].params.stop != first.stop  # each framing's own stops


def test_steering_is_a_variant_dimension_with_shared_seeds(tmp_path, personas, tiny_engine):
    """`steer: {vector, strength: [0, 2, 4]}` makes each variant one per strength, paired by seed:
    strength 0 is the variant unsteered, the others record their strength and decode steered."""
    import numpy as np

    from simlab.steer import library
    from simlab.steer.vector import SteerVector

    rng = np.random.default_rng(2)
    SteerVector({1: (8 * rng.standard_normal(32)).astype(np.float32)}, {"name": "v"}).write(
        library.folder() / "v.gguf"
    )
    a, _ = personas
    data = {
        "turns": ["hello"],
        "samples": 2,
        "seed": 40,
        "sampling": {"max_tokens": 6, "temperature": 1.0},
        "variants": [{"persona": str(a)}],
        "steer": {"vector": "v", "strength": [0, 2, 4], "layers": "1"},
    }
    spec = build_spec(data, "spec")
    assert [v.name for v in spec.variants] == ["a", "a v:2@1", "a v:4@1"]
    with SessionStore(tmp_path / "s").create("x") as session:
        runs = run_sweep(spec, session, lambda m: tiny_engine)
    replies = [[s[0] for s in run.samples] for run in runs]
    assert [r.seed for r in replies[0]] == [r.seed for r in replies[2]]  # paired: the same seeds
    assert all(r.steer is None for r in replies[0])
    assert [r.steer["terms"][0]["strength"] for r in replies[2]] == [4.0, 4.0]
    assert [r.token_ids for r in replies[0]] != [r.token_ids for r in replies[2]]
    for bad, expected in (
        ({"vector": "v", "strength": [1, 1]}, "a list of different numbers"),
        ({"vector": "nope"}, "no steering vector 'nope'"),
        ({"vector": "v", "dose": 1}, "unknown key 'dose'"),
    ):
        with pytest.raises(SpecError, match=expected):
            build_spec({**data, "steer": bad}, "spec")
