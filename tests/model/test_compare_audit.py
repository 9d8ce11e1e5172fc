"""A compare run on the tiny GPT-2 whose JSON is recomputed here from the session file alone, with
scipy and nltk and nothing of simlab's statistics: what a reviewer auditing a report would do."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from simlab.cli.main import main

nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
SAMPLES, STOP = 8, "e"  # a stop string the random model writes often: replies end there or are cut


@pytest.fixture(scope="module")
def audited(tmp_path_factory, tiny_dir):
    tmp = tmp_path_factory.mktemp("audit")
    for name, frame in (("plain", "A chat."), ("other", "Another talk.")):
        (tmp / f"{name}.yaml").write_text(
            f'name: {name}\nframe: "{frame}\\n\\n"\nspeakers: {{user: Ann, model: Bo}}\nstop: ["{STOP}"]\n'
        )
    spec = {
        "turns": ["hello", "and then?"],
        "samples": SAMPLES,
        "seed": 11,
        "sampling": {"max_tokens": 6, "temperature": 1.0},
        "variants": [
            {"persona": str(tmp / "plain.yaml")},
            {"persona": str(tmp / "other.yaml")},
            {"persona": str(tmp / "plain.yaml"), "name": "plain-cold", "sampling": {"temperature": 0.5}},
        ],
    }
    (tmp / "audit.yaml").write_text(json.dumps(spec))
    argv = ["compare", str(tmp / "audit.yaml"), "--model", str(tiny_dir), "--json"]
    argv += ["--sessions-dir", str(tmp / "s"), "--report-dir", str(tmp / "r")]
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    report = json.loads(out.getvalue())  # strict JSON: no NaN
    records = [json.loads(line) for line in (tmp / "s" / "compare-audit.jsonl").read_text().splitlines()]
    return report, records


def samples_of(records, tokenizer):
    """variant -> sample index -> [reply per turn], each (text, own tokens, own logprobs, finish)."""
    nodes = {r["node"]["id"]: r["node"] for r in records if r["type"] == "node"}
    tags = {r["id"]: r["tag"] for r in records if r["type"] == "tag" and r["tag"].startswith("variant:")}
    children: dict = {}
    for node in nodes.values():
        children.setdefault(node.get("parent"), []).append(node)
    out = {}
    for root in children[None]:
        [turn] = children[root["id"]]  # frame -> the first user turn -> its replies, one per sample
        by_sample = {}
        for first in children[turn["id"]]:
            chain, node = [first], first
            while True:
                below = children.get(node["id"], [])
                replies = children.get(below[0]["id"], []) if below else []
                if not replies:
                    break
                node = replies[0]
                chain.append(node)
            by_sample[first["seed"] - 11] = [own(n, tokenizer) for n in chain]
        out[tags[root["id"]].split(":", 1)[1]] = by_sample
    return out


def own(node, tokenizer):
    """The reply's own tokens, found independently: the shortest prefix whose decoding (less the
    label's space) covers the stored text."""
    ids, text = node.get("token_ids", []), node["text"]
    k = next(
        (k for k in range(len(ids) + 1) if len(tokenizer.decode(ids[:k]).removeprefix(" ")) >= len(text)),
        len(ids),
    )
    return text, k, node.get("logprobs", [])[:k], node.get("finish_reason")


def per_sample(replies):
    ended = [k for _, k, _, finish in replies if finish != "length"]
    lps = [lp for _, _, lp, _ in replies for lp in lp]
    return {
        "length": np.mean(ended) if ended else math.nan,
        "logprob": np.mean(lps) if lps else math.nan,
        "cut_rate": np.mean([f == "length" for *_, f in replies]),
        "eos_rate": np.mean([f == "eos" for *_, f in replies]),
    }


def test_the_report_agrees_with_a_recomputation_from_the_session_file(audited, tiny_dir):
    from transformers import AutoTokenizer

    report, records = audited
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    data = samples_of(records, tokenizer)
    variants = {v["name"]: v for v in report["variants"]}
    assert set(data) == set(variants) and report["pairs"] == SAMPLES
    finishes = [f for v in data.values() for s in v.values() for *_, f in s]
    assert "stop" in finishes and "length" in finishes  # both kinds of ending are exercised
    for name, samples in data.items():
        v = variants[name]
        keys = sorted(samples)
        values = {
            m: [per_sample(samples[i])[m] for i in keys]
            for m in ("length", "logprob", "cut_rate", "eos_rate")
        }
        for metric in ("length", "logprob"):
            got, expected = v["values"][metric], values[metric]
            assert [None if math.isnan(x) else pytest.approx(x) for x in expected] == got
            finite = [x for x in expected if not math.isnan(x)]
            m = v["metrics"][metric]
            assert m["mean"] == pytest.approx(np.mean(finite)) and m["low"] <= m["mean"] <= m["high"]
        replies = [r for i in keys for r in samples[i]]
        cut = sum(f == "length" for *_, f in replies)
        ci = stats.binomtest(cut, len(replies)).proportion_ci(method="exact")
        assert v["metrics"]["cut_rate"]["low"] == pytest.approx(ci.low)
        assert v["metrics"]["cut_rate"]["high"] == pytest.approx(ci.high)
        # self-BLEU by nltk, brute force: each reply against the others at its turn
        smooth = nltk_bleu.SmoothingFunction().method1
        scores = []
        for t in range(2):
            texts = [samples[i][t][0].lower().split() for i in keys]
            for i, hyp in enumerate(texts):
                refs = [r for j, r in enumerate(texts) if j != i]
                scores.append(nltk_bleu.sentence_bleu(refs, hyp, smoothing_function=smooth) if hyp else 0.0)
        assert v["metrics"]["self_bleu"]["mean"] == pytest.approx(np.mean(scores))
        words = [w for r in replies for w in r[0].lower().split()]  # corpus distinct-1: all replies
        assert v["metrics"]["distinct_1"]["mean"] == pytest.approx(len(set(words)) / len(words))
        assert v["params"]["temperature"] == (0.5 if name == "plain-cold" else 1.0)

    # paired differences: permutation p-values (scipy, exact) and Holm across the table
    base = data["plain"]
    pvalues = []
    for name in ("other", "plain-cold"):
        for metric in ("length", "logprob"):
            a = np.array([per_sample(base[i])[metric] for i in sorted(base)])
            b = np.array([per_sample(data[name][i])[metric] for i in sorted(base)])
            keep = ~np.isnan(a) & ~np.isnan(b)
            got = report["differences"][name][metric]
            if keep.sum() < 2 or np.all(a[keep] == b[keep]):
                continue
            exact = stats.permutation_test(
                (a[keep], b[keep]), lambda x, y, axis: np.mean(y - x, axis=axis),
                permutation_type="samples", n_resamples=np.inf,
            )  # fmt: skip
            assert got["mean"] == pytest.approx(np.mean(b[keep] - a[keep]))
            assert got["p"] == pytest.approx(exact.pvalue)
            pvalues.append((got["p"], got["p_holm"]))
    assert len(pvalues) >= 3  # the tests above were not all skipped
    every = [d[k]["p"] for d in report["differences"].values() for k in d if d[k].get("p") is not None]
    for p, p_holm in pvalues:  # Holm: p times the number of tests at most as small, never below p
        assert p <= p_holm <= min(1.0, len(every) * p) + 1e-12
    sampled = report["divergence"][0]
    assert {"jsd_bits", "sampled_jsd_bits"} <= set(sampled)
    cold = next(d for d in report["divergence"] if {d["a"], d["b"]} == {"plain", "plain-cold"})
    assert cold["jsd_bits"] == 0 and cold["sampled_jsd_bits"] > 0  # the same frame, another temperature
