"""compare on the real embedded model: two shipped personas, the report and its scores."""

import pytest

from simlab.compare.spec import build_spec
from simlab.compare.stats import analyse
from simlab.compare.sweep import run_sweep
from simlab.session.store import SessionStore


@pytest.mark.slow
def test_two_shipped_personas_on_the_embedded_model(tmp_path, embedded_engine):
    from simlab.compare.report import terminal
    from simlab.compare.report_html import html_report

    spec = build_spec(
        {
            "turns": ["What do you want from me?"],
            "samples": 3,
            "seed": 5,
            "sampling": {"max_tokens": 16},
            "variants": ["interview", "stage-play"],
        },
        "slow",
    )
    with SessionStore(tmp_path / "s").create("compare-slow") as session:
        runs = run_sweep(spec, session, lambda m: embedded_engine)
    analysis = analyse(spec, runs, lambda m: embedded_engine, seed=5)
    assert [len(r.samples) for r in runs] == [3, 3] and all(s[0].text for r in runs for s in r.samples)
    [d] = analysis.divergence
    assert 0.01 < d["jsd_bits"] < 1 and d["kl_ab"] > 0 and d["kl_ba"] > 0
    cross = analysis.cross_logprob
    assert all(-20 < cross[a][b].mean < 0 for a in cross for b in cross[a])
    page = html_report(analysis)
    plots = sum(page.count(k) for k in ("<svg", "every sample of every", "no values:"))
    assert "interview" in terminal(analysis) and plots == 5  # length, logprob, cut, eos, stop
    assert 0 < d["sampled_jsd_bits"] <= 1  # under each persona's own temperature and top-p


@pytest.mark.slow
def test_a_later_turns_replies_decoded_together_are_each_the_reply_alone(
    tmp_path, embedded_engine, monkeypatch
):
    """A 2-turn sweep decodes turn 2's samples as one batch of different prompts; replayed alone,
    each reply gives the same tokens and, on the GGUF kernel (rows summed alone), the very same
    log-probabilities."""
    from simlab.engine import local
    from simlab.engine.prefix import unpack
    from simlab.frame.render import reply_prompt
    from simlab.models import native
    from simlab.replay import params_of

    spec = build_spec(
        {
            "turns": ["Where were you last night?", "And after that?"],
            "samples": 4,
            "seed": 11,
            "sampling": {"max_tokens": 24, "temperature": 0.9},
            "variants": ["interview"],
        },
        "slow",
    )
    batches = []
    decode = local._lockstep
    monkeypatch.setattr(
        local, "_lockstep", lambda engine, runs: batches.append(len(runs)) or decode(engine, runs)
    )
    with SessionStore(tmp_path / "s").create("compare-ragged") as session:
        [run] = run_sweep(spec, session, lambda m: embedded_engine)
        assert batches == [4]  # turn 2's four replies, as one batch
        lengths = set()
        for sample in run.samples:
            reply = sample[1]
            assert not reply.window  # the whole path was read: its prompt is the path's
            prompt = reply_prompt(session.tree.path(reply.parent), reply.speaker, embedded_engine.tokenizer)
            ids = embedded_engine.encode(prompt) if isinstance(prompt, str) else prompt
            lengths.add(len(ids))
            [alone] = embedded_engine.generate(ids, params_of(reply, {}), passes=unpack(reply.prefill))
            assert alone.token_ids == list(reply.token_ids)
            if embedded_engine.info.weights == "gguf" and native.library() is not None:
                assert [t.logprob for t in alone.tokens] == list(reply.logprobs)
    assert len(lengths) > 1  # the prompts differed in length: a ragged batch
