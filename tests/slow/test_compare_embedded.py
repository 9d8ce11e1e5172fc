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
