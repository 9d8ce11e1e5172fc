"""compare's dose-response table for a `steer:` spec (compare.dose), on the tiny GPT-2: each readout
against a computation of its own from the model's plain forward, and the prompt-equivalent strength."""

import math

import numpy as np
import pytest
import torch
from conftest import two_personas

from simlab.compare.dose import equivalent
from simlab.compare.report import as_json, terminal
from simlab.compare.report_html import html_report
from simlab.compare.spec import build_spec
from simlab.compare.stats import analyse, read_reply
from simlab.compare.sweep import run_sweep
from simlab.errors import SpecError
from simlab.session.store import SessionStore


@pytest.fixture
def personas(tmp_path):
    return two_personas(tmp_path)


@pytest.fixture
def vector():
    from simlab.steer import library
    from simlab.steer.vector import SteerVector

    rng = np.random.default_rng(3)
    direction = (6 * rng.standard_normal(32)).astype(np.float32)
    SteerVector({1: direction}, {"name": "v"}).write(library.folder() / "v.gguf")
    return direction


def logits_of(engine, ids):
    """The log-distributions of one plain forward, and block 1's output (GPT-2's last block: its
    hidden_states entry is after the final norm, so a hook of the test's own reads it)."""
    seen = []
    handle = engine.model.transformer.h[1].register_forward_hook(
        lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.inference_mode():
            out = engine.model(input_ids=torch.tensor([ids]))
    finally:
        handle.remove()
    return out.logits[0].double().log_softmax(-1), seen[0][0]


def test_each_readout_is_what_the_plain_forward_gives(tmp_path, personas, vector, tiny_engine):
    a, b = personas
    data = {
        "turns": ["hello"],
        "samples": 3,
        "seed": 40,
        "sampling": {"max_tokens": 6, "temperature": 1.0},
        "variants": [{"persona": str(a)}],
        "steer": {"vector": "v", "strength": [0, 1, 3], "layers": "1", "toward": str(b)},
    }
    spec = build_spec(data, "spec")
    with SessionStore(tmp_path / "s").create("x") as session:
        runs = run_sweep(spec, session, lambda m: tiny_engine)
        analysis = analyse(spec, runs, lambda m: tiny_engine, seed=0)
    [dose] = analysis.dose
    assert [r.strength for r in dose.rows] == [0.0, 1.0, 3.0] and dose.toward == "b" and dose.blocks == [1]
    # by hand: block 1's output at the reply's own tokens (read unsteered, whatever the strength),
    # projected on the unit direction, averaged over the tokens; KL from b's prompt on the same tokens
    from simlab.compare.scoring import first_prompt

    unit = vector.astype(np.float64) / np.linalg.norm(vector)
    lead = runs[0].variant.persona.framing().lead()
    ours = tiny_engine.encode(first_prompt(runs[0].variant, "hello", tiny_engine.tokenizer))
    theirs = tiny_engine.encode(_b_prompt(b, tiny_engine))
    towards = {}
    for run, row in ((runs[0], dose.rows[0]), (runs[2], dose.rows[2])):
        traits, towards[row.strength] = [], []
        for [node] in run.samples:  # the reply's own tokens: not those that spelled the stop string
            own = read_reply(node, lead, tiny_engine.tokenizer.decode, None).tokens
            reply = list(node.token_ids)[: int(own)]
            p, hidden = logits_of(tiny_engine, ours + reply)
            q, _ = logits_of(tiny_engine, theirs + reply)
            traits.append(float((hidden[len(ours) :].double().numpy() @ unit).mean()))
            p, q = p[len(ours) - 1 : -1], q[len(theirs) - 1 : -1]
            towards[row.strength].append(float((q.exp() * (q - p)).sum(-1).mean()))
        assert row.trait.mean == pytest.approx(np.mean(traits), rel=1e-4, abs=1e-4)
    base = dose.rows[0]
    assert base.kl_toward.mean == pytest.approx(np.mean(towards[0.0]), rel=1e-4, abs=1e-6)
    assert base.kl_unsteered is None and base.trait_change is None and base.neutral_change is None
    strong = dose.rows[2]
    assert 0 < dose.rows[1].kl_unsteered.mean < strong.kl_unsteered.mean  # more strength, further off
    from simlab.compare.dose import NEUTRAL

    neutral = tiny_engine.encode(NEUTRAL.read_text())[: tiny_engine.info.context_length]
    assert base.neutral == pytest.approx(np.mean(tiny_engine.score(neutral)), abs=1e-5)
    assert strong.neutral_change.mean == pytest.approx(strong.neutral - base.neutral, abs=1e-9)
    assert strong.neutral_change.n == len(neutral) - 1  # paired by token
    assert strong.trait_change.n == 3 and "paired" in strong.trait_change.method
    assert dose.equivalent["samples"] == 3 and 0 <= dose.equivalent["strength"] <= 3
    text = terminal(analysis, width=None)
    assert "Dose-response: v on a (blocks 1, all positions)" in text and "Prompt-equivalent strength" in text
    assert as_json(analysis)["dose"][0]["rows"][2]["strength"] == 3.0
    page = html_report(analysis)  # a plot per readout against strength, the equivalent one marked
    assert "<h2>Dose-response: v on a</h2>" in page and page.count("<polyline") == 4
    assert page.count('stroke-dasharray="4 3"') == 1


def _b_prompt(path, engine):
    from simlab.compare.scoring import first_prompt
    from simlab.compare.spec import Variant
    from simlab.engine.params import SamplingParams
    from simlab.persona.library import find

    return first_prompt(Variant("b", find(str(path)), SamplingParams()), "hello", engine.tokenizer)


def test_the_prompt_equivalent_strength_is_the_least_kl_with_its_interval():
    strengths = [0, 1, 2, 4]
    rng = np.random.default_rng(0)
    # each sample's KL a parabola with its least at 1.5 (plus noise): the vertex through 1, 2, 4
    kl = np.array([[(s - 1.5) ** 2 + 1 for s in strengths] for _ in range(12)]) + rng.normal(0, 0.05, (12, 4))
    found = equivalent(strengths, kl, seed=0)
    assert found["edge"] is None and 1.2 < found["strength"] < 1.8
    assert found["low"] <= found["strength"] <= found["high"] and found["samples"] == 12
    falling = np.array([[4 - s for s in strengths]] * 5, dtype=float)
    assert equivalent(strengths, falling, seed=0)["edge"] == "high"  # least at 4: it may lie beyond
    assert math.isnan(equivalent(strengths, falling[:1], seed=0)["low"])  # one sample: no interval
    assert equivalent(strengths, np.full((3, 4), np.nan), seed=0) is None  # no reply read at all


def test_toward_a_persona_that_is_not_there_is_one_line(personas, vector):
    a, _ = personas
    data = {"turns": ["hi"], "variants": [{"persona": str(a)}]}
    with pytest.raises(SpecError, match="toward"):
        build_spec({**data, "steer": {"vector": "v", "strength": [0, 1], "toward": "nobody-here"}}, "spec")
    with pytest.raises(SpecError, match="toward: a persona name"):
        build_spec({**data, "steer": {"vector": "v", "strength": [0, 1], "toward": 3}}, "spec")
    spec = build_spec({**data, "steer": {"vector": "v", "strength": [1, 2]}}, "spec")  # 0: the baseline
    assert [v.name for v in spec.variants] == ["a", "a v:1", "a v:2"]
    assert [s for s, _ in spec.doses[0].strengths] == [0.0, 1.0, 2.0] and spec.doses[0].toward is None


def test_a_vector_that_does_not_fit_the_model_is_one_line_before_any_session(
    capsys, tmp_path, personas, tiny_dir
):
    import json

    from conftest import run_cli

    from simlab.steer import library
    from simlab.steer.vector import SteerVector

    SteerVector({5: np.ones(32, np.float32)}, {"name": "far"}).write(library.folder() / "far.gguf")
    a, _ = personas
    spec = tmp_path / "s.yaml"
    data = {"turns": ["hi"], "samples": 2, "variants": [{"persona": str(a)}], "steer": {"vector": "far"}}
    spec.write_text(json.dumps(data))
    code, _, err = run_cli(
        capsys, "compare", spec, "--model", tiny_dir, "--sessions-dir", tmp_path / "sessions"
    )
    assert code == 2 and "a far:1: steer: far has directions for block 5 but" in err, err
    assert len(err.strip().splitlines()) == 1 and not list((tmp_path / "sessions").glob("compare-*"))


def test_several_block_ranges_are_a_dose_response_each_on_one_baseline(personas):
    from simlab.steer import library
    from simlab.steer.vector import SteerVector

    SteerVector({1: np.ones(32, np.float32), 2: np.ones(32, np.float32)}, {"name": "w"}).write(
        library.folder() / "w.gguf"
    )
    a, _ = personas
    data = {"turns": ["hi"], "variants": [{"persona": str(a)}]}
    spec = build_spec({**data, "steer": {"vector": "w", "strength": [1, 2], "layers": ["1", 2]}}, "spec")
    assert [v.name for v in spec.variants] == ["a", "a w:1@1", "a w:2@1", "a w:1@2", "a w:2@2"]
    assert [(d.base, d.use.blocks, [n for _, n in d.strengths]) for d in spec.doses] == [
        ("a", (1,), ["a", "a w:1@1", "a w:2@1"]),
        ("a", (2,), ["a", "a w:1@2", "a w:2@2"]),
    ]
    two = {
        "turns": ["hi"],
        "variants": [str(a), {"persona": str(a), "name": "a-hot", "sampling": {"temperature": 1.5}}],
    }
    spec = build_spec(
        {**two, "steer": {"vector": "w", "strength": [1], "layers": "1", "toward": str(personas[1])}}, "s"
    )
    from simlab.compare.scoring import _frames

    runs = [type("Run", (), {"variant": v})() for v in spec.variants]  # (the frames need only variants)
    assert [name for name, _ in _frames(spec, runs)] == ["a", "b (toward)"]  # a-hot reads a's frame
    with pytest.raises(SpecError, match="a list of different ones"):
        build_spec({**data, "steer": {"vector": "w", "layers": ["1", "1"]}}, "spec")
