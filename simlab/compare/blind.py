"""The report of a session's blind comparisons (session.blind): how often each variant was ranked
best, with its exact (Clopper-Pearson) interval, and each pair's head-to-head rate (a ranked above
b where both were shown), with theirs; the variants named as the comparisons hid them."""

from __future__ import annotations

from typing import Any

from simlab.compare.inference import rate
from simlab.session.blind import Picks


def analyse(picks: Picks) -> dict[str, Any]:
    best = {}
    for name, (k, n) in sorted(picks.wins().items(), key=lambda kv: (-kv[1][0] / max(1, kv[1][1]), kv[0])):
        est = rate(k, n)
        best[name] = {"best": k, "shown": n, "rate": est.mean, "low": est.low, "high": est.high}
    pairs = []
    for (a, b), (k, n) in sorted(picks.pairs().items()):
        est = rate(k, n)
        pairs.append(
            {"a": a, "b": b, "a_above_b": k, "both": n, "rate": est.mean, "low": est.low, "high": est.high}
        )
    return {
        "comparisons": len(picks.comparisons),
        "variants": best,
        "pairs": pairs,
        "interval": "Clopper-Pearson 95%",
    }


def lines(report: dict[str, Any]) -> list[str]:
    if not report["comparisons"]:
        return ["no blind comparisons in this session yet: B in the Loom editor (simlab loom NAME) makes one"]
    width = max(len("variant"), *(len(v) for v in report["variants"]))
    out = [f"{report['comparisons']} blind comparison(s); rates with exact 95% intervals", ""]
    out.append(f"{'variant':<{width}}  ranked best  rate   95% interval")
    for name, v in report["variants"].items():
        interval = f"[{v['low']:.2f}, {v['high']:.2f}]"
        out.append(f"{name:<{width}}  {v['best']:>4} of {v['shown']:<4} {v['rate']:.2f}   {interval}")
    if len(report["variants"]) < 2:
        same = "note: every reply ranked was one variant (persona, temperature, steering): the rate"
        out += ["", f"{same} compares it with itself; rank replies of different frames or settings"]
    if report["pairs"]:
        out += ["", "head to head (a ranked above b, where both were shown)"]
        for p in report["pairs"]:
            out.append(
                f"{p['a']}  over  {p['b']}: {p['a_above_b']} of {p['both']}, {p['rate']:.2f} "
                f"[{p['low']:.2f}, {p['high']:.2f}]"
            )
    return out
