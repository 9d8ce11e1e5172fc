"""A sweep's analysis as a terminal table, a Markdown file, a self-contained HTML page, or JSON."""

from __future__ import annotations

import math
import textwrap
import time
from typing import Any

from simlab.compare.inference import FLOORED, Estimate
from simlab.compare.stats import METRICS, Analysis
from simlab.steer.use import runs


def _fmt(e: Estimate, digits: int = 2, of: int | None = None, key: str = "", sign: str = "") -> str:
    if e.n == 0 or math.isnan(e.mean):
        return "–"
    mark = " *" if sign and e.significant else ""
    if math.isnan(e.low):  # no interval: say why when the samples did not vary (enough)
        why = f" ({e.extra['why']})" if e.extra.get("why") else ""
        return f"{e.mean:{sign}.{digits}f}{why}{mark}" + _fewer(e, of, key)
    low = f"{e.low:{sign}.{digits}f}" + (" floor" if FLOORED in e.method else "")
    return f"{e.mean:{sign}.{digits}f} [{low}, {e.high:{sign}.{digits}f}]{mark}" + _fewer(e, of, key)


def _diff(e: Estimate, digits: int = 2, of: int | None = None, key: str = "") -> str:
    return _fmt(e, digits, of, key, sign="+")


def _fewer(e: Estimate, of: int | None, key: str) -> str:
    """A mean over fewer samples than the table's n (cut replies have no length): its own n."""
    return f" n={e.n}" if of is not None and key in ("length", "logprob") and e.n != of else ""


def _p(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


PARAMS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "repetition_penalty",
    "max_new_tokens",
    "stop",
)


def tables(a: Analysis) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table in the report."""
    out = []
    header = ["variant", "n"] + [METRICS[k][0] for k in METRICS]
    rows = [
        [v.name, str(v.samples)] + [_fmt(v.estimates[k], of=v.samples, key=k) for k in METRICS]
        for v in a.variants
    ]
    out.append((f"Per variant: mean [95% interval] ({INTERVALS})", header, rows))
    if a.differences:
        base = a.variants[0].name
        rows = [
            [name, str(a.pairs)] + [_diff(d[k], of=a.pairs, key=k) for k in METRICS if k != "stop_rate"]
            for name, d in a.differences.items()
        ]
        out.append(
            (
                f"Difference from {base}, paired by seed (* survives Holm's correction at 5% "
                "across this table)",
                ["variant", "pairs"] + [METRICS[k][0] for k in METRICS if k != "stop_rate"],
                rows,
            )
        )
        rows = [
            [name, METRICS[k][0], _diff(e), _p(e.extra.get("p")), _p(e.extra.get("p_holm")),
             f"{e.extra['d']:+.2f}" if math.isfinite(e.extra.get("d", math.nan)) else "–", e.method]
            for name, d in a.differences.items()
            for k, e in d.items()
        ]  # fmt: skip
        title = (
            "Tests: the p-value of each difference (its method) decides the mark *, after Holm's "
            "correction; the interval beside it is the bootstrap's or jackknife's, so near 5% the two "
            "can disagree"
        )
        out.append((title, ["variant", "metric", "difference", "p", "p (Holm)", "d_z", "method"], rows))
    for t, per_turn in enumerate(
        zip(*(v.turns for v in a.variants)) if a.variants and a.variants[0].turns else []
    ):
        rows = [
            [v.name, str(v.samples)] + [_fmt(e[k], of=v.samples, key=k) for k in METRICS]
            for v, e in zip(a.variants, per_turn)
        ]
        out.append((f"Turn {t + 1} alone, per variant: {a.spec.turns[t]}", header, rows))
    rows = [[v.name, v.persona, v.model] + [_param(v.params.get(k)) for k in PARAMS] for v in a.variants]
    out.append(("Sampling parameters each variant ran with", ["variant", "persona", "model", *PARAMS], rows))
    if a.cross_logprob:
        names = [v.name for v in a.variants]
        frames = list(a.cross_logprob[names[0]])  # the variants', then any toward persona's
        rows = [[src] + [_fmt(a.cross_logprob[src][frame]) for frame in frames] for src in names]
        out.append(
            (
                "Cross log-probability: replies of each row, teacher-forced under each column's frame "
                "(mean nats per token)",
                ["replies of \\ frame"] + frames,
                rows,
            )
        )
    if a.divergence:
        rows = [
            [d["a"], d["b"], f"{d['kl_ab']:.3f}", f"{d['kl_ba']:.3f}", f"{d['jsd_bits']:.3f}",
             f"{d['sampled_kl_ab']:.3f}", f"{d['sampled_kl_ba']:.3f}", f"{d['sampled_jsd_bits']:.3f}"]
            for d in a.divergence
        ]  # fmt: skip
        out.append(
            (
                "Next-token distributions at the first reply: at temperature 1, and as each variant "
                "samples (its temperature, top-k, top-p, min-p; ∞: it can draw what the other cannot)",
                [
                    "A",
                    "B",
                    "KL(A||B) nats",
                    "KL(B||A) nats",
                    "JSD bits",
                    "sampled KL(A||B)",
                    "sampled KL(B||A)",
                    "sampled JSD bits",
                ],
                rows,
            )
        )
    return out + _judge_tables(a) + _dose_tables(a)


def _judge_tables(a: Analysis) -> list[tuple[str, list[str], list[list[str]]]]:
    """The judge's rubric metrics (compare.judge) beside the others: per variant, and paired."""
    if not a.judged:
        return []
    metrics = list(next(iter(a.judged.values())))
    rows = [
        [name, str(a.variants[0].samples)] + [_fmt(d[m], digits=3) for m in metrics]
        for name, d in a.judged.items()
    ]
    out = [
        (
            f"Judge {a.judge}: P(first label), or the scale's expected value; mean [95% interval]",
            ["variant", "n", *metrics],
            rows,
        )
    ]
    if a.judged_diff:
        rows = [
            [name, str(a.pairs)] + [_diff(d[m], digits=3) for m in metrics]
            for name, d in a.judged_diff.items()
        ]
        base = a.variants[0].name
        out.append(
            (
                f"Judge: difference from {base}, paired by seed (* survives Holm's correction)",
                ["variant", "pairs", *metrics],
                rows,
            )
        )
    return out


def _dose_tables(a: Analysis) -> list[tuple[str, list[str], list[list[str]]]]:
    """Each steered variant's strengths (compare.dose), and its prompt-equivalent strength."""
    out = []
    for d in a.dose:
        toward = f"KL from {d.toward}'s prompt" if d.toward else None
        title = (
            f"Dose-response: {d.vector} on {d.base} (blocks {runs(d.blocks)}, {d.positions} positions). "
            "trait: the reply's residual projected on the vector, read unsteered; KL: steered against "
            "unsteered on the reply's own tokens (nats per token); neutral: nats per token of a neutral "
            "text, and its change"
            + (f"; {toward}: KL({d.toward} || steered) on the unsteered replies" if toward else "")
        )
        header = ["strength", "trait", "trait change", "KL to unsteered", "neutral", "neutral change"]
        rows = [
            [f"{r.strength:g}", _fmt(r.trait), _diff(r.trait_change) if r.trait_change else "–",
             _fmt(r.kl_unsteered, 3) if r.kl_unsteered else "0", f"{r.neutral:.3f}",
             _diff(r.neutral_change, 3) if r.neutral_change else "–"]
            + ([_fmt(r.kl_toward, 3)] if toward else [])
            for r in d.rows
        ]  # fmt: skip
        out.append((title, header + ([toward] if toward else []), rows))
    rows = [
        [d.base, runs(d.blocks), d.toward or "", *_equivalent(d.equivalent)] for d in a.dose if d.equivalent
    ]
    if rows:  # one row a variant and block range tried
        out.append(
            (
                "Prompt-equivalent strength: where the vector brings the variant's next-token "
                "distributions closest to the toward persona's own prompt (least KL; interval: samples "
                "drawn again)",
                ["variant", "blocks", "toward", "strength", "95% interval", "samples"],
                rows,
            )
        )
    return out


def _equivalent(e: dict) -> list[str]:
    edge = {"low": " (least at the smallest tried)", "high": " (least at the largest tried: may lie beyond)"}
    interval = "–" if math.isnan(e["low"]) else f"[{e['low']:.3g}, {e['high']:.3g}]"
    return [f"{e['strength']:.3g}{edge.get(e['edge'], '')}", interval, str(e["samples"])]


INTERVALS = (
    "length, logprob: studentized bootstrap over samples (t-interval below 8); rates: Clopper-Pearson "
    "over replies; distinct-n, self-BLEU: jackknife over samples"
)


def _param(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(repr(v) for v in value) or "–"
    return "–" if value is None else str(value)


def terminal(a: Analysis, width: int | None = 80) -> str:
    """The tables, the first tokens, one sample per variant; a table wider than `width` is cut into
    column groups that fit, each led by the variant names (None: one line per row, however wide)."""
    lines = [
        f"compare {a.spec.name}: {len(a.variants)} variants x {a.spec.samples} samples x "
        f"{len(a.spec.turns)} turn(s), seed {a.spec.seed}",
        "",
    ]
    for title, header, rows in tables(a):
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines += _wrap(title, width) if width else [title]
        for group in _column_groups(widths, width, keys=sum(h in KEYS for h in header[:2])):
            lines.append("  ".join(header[i].ljust(widths[i]) for i in group))
            lines.append("  ".join("-" * widths[i] for i in group))
            lines += ["  ".join(r[i].ljust(widths[i]) for i in group).rstrip() for r in rows]
            lines.append("")
    for line in first_tokens(a):
        lines += _wrap(line, width, subsequent_indent="    ") if width else [line]
    lines += ["", f"One sample per variant (turn {len(a.spec.turns)}; all of them are in the reports):"]
    for v in a.variants:
        if v.texts and v.texts[-1]:
            seed, text, finish = v.texts[-1][0]
            lines += _wrap(
                f"{v.name} (seed {seed}, {finish}): {' '.join(text.split())}",
                width=width or 80,
                subsequent_indent="    ",
                max_lines=4,
            )
    for n in a.notes:
        lines += _wrap(f"note: {n}", width, subsequent_indent="    ") if width else [f"note: {n}"]
    return "\n".join(lines).rstrip() + "\n"


KEYS = {"variant", "metric", "A", "B", "strength"}  # a table's leading columns that say what a row is


def _wrap(text: str, width: int | None = None, **options) -> list[str]:
    """textwrap's lines, never breaking a word or a flag at its hyphen (a long one overflows)."""
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False, **options)


def _column_groups(widths: list[int], width: int | None, keys: int = 1) -> list[list[int]]:
    """Column indices in groups that fit the width, each starting with the `keys` columns that
    name a row (the variant, and the metric in the tests table)."""
    keys = max(1, keys)
    if width is None or sum(widths) + 2 * (len(widths) - 1) <= width:
        return [list(range(len(widths)))]
    groups, current = [], list(range(keys))
    for i in range(keys, len(widths)):
        if len(current) > keys and sum(widths[j] + 2 for j in current) + widths[i] > width:
            groups.append(current)
            current = list(range(keys))
        current.append(i)
    return [*groups, current]


def first_tokens(a: Analysis) -> list[str]:
    """The most likely first tokens of the reply under each variant's frame, per compared pair."""
    return [
        f"most likely first tokens: {d['a']}: {_tops(d['top_a'])} | {d['b']}: {_tops(d['top_b'])}"
        for d in a.divergence
    ]


def _tops(tops) -> str:
    return ", ".join(f"{t!r} {p:.2f}" for t, p in tops)


def markdown(a: Analysis) -> str:
    lines = [
        f"# Compare: {a.spec.name}",
        "",
        f"{len(a.variants)} variants × {a.spec.samples} samples × {len(a.spec.turns)} turn(s), "
        f"base seed {a.spec.seed}. Generated {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
    ]
    lines += ["Metrics: " + "; ".join(f"**{label}**: {what}" for label, what in METRICS.values()) + ".", ""]
    for title, header, rows in tables(a):
        cells = [h.replace("|", "\\|") for h in header]
        lines += [f"## {title}", "", "| " + " | ".join(cells) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        lines.append("")
    for n in a.notes:
        lines += [f"> {n}", ""]
    first = first_tokens(a)
    if first:
        lines += ["## Most likely first tokens", "", *[f"- {line.split(': ', 1)[1]}" for line in first], ""]
    for t, turn in enumerate(a.spec.turns):
        lines += [f"## Turn {t + 1}: {turn}", ""]
        for v in a.variants:
            lines += [f"### {v.name}", ""]
            lines += [
                f"{i + 1}. *(seed {seed}, {finish})* {' '.join(text.split())}"
                for i, (seed, text, finish) in enumerate(v.texts[t])
            ]
            lines.append("")
    return "\n".join(lines)


def as_json(a: Analysis) -> dict[str, Any]:
    """The analysis as strict JSON: an undefined value (NaN) is null, an infinite one "inf"."""
    return _strict(_as_dict(a))


def _strict(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _as_dict(a: Analysis) -> dict[str, Any]:
    return {
        "name": a.spec.name,
        "turns": list(a.spec.turns),
        "samples": a.spec.samples,
        "seed": a.spec.seed,
        "metrics": {k: {"label": label, "meaning": what} for k, (label, what) in METRICS.items()},
        "variants": [
            {
                "name": v.name,
                "persona": v.persona,
                "model": v.model,
                "samples": v.samples,
                "prompt_tokens": v.prompt_tokens,
                "params": v.params,
                "turns": [{k: e.as_dict() for k, e in turn.items()} for turn in v.turns],
                "metrics": {k: e.as_dict() for k, e in v.estimates.items()},
                "values": v.values,
                "replies": [
                    [{"seed": s, "text": t, "finish_reason": f} for s, t, f in turn] for turn in v.texts
                ],
            }
            for v in a.variants
        ],
        "differences": {
            name: {
                k: {**e.as_dict(), "excludes_zero": e.excludes_zero, "significant": e.significant}
                for k, e in d.items()
            }
            for name, d in a.differences.items()
        },
        "cross_logprob": {
            src: {frame: e.as_dict() for frame, e in row.items()} for src, row in a.cross_logprob.items()
        },
        "divergence": a.divergence,
        "dose": [d.as_dict() for d in a.dose],
        "judge": {
            "model": a.judge,
            "variants": {n: {m: e.as_dict() for m, e in d.items()} for n, d in a.judged.items()},
            "differences": {
                n: {m: {**e.as_dict(), "significant": e.significant} for m, e in d.items()}
                for n, d in a.judged_diff.items()
            },
            "values": a.judged_values,
        }
        if a.judged
        else None,
        "pairs": a.pairs,
        "intervals": INTERVALS,
        "notes": a.notes,
    }
