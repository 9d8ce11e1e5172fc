"""A sweep's analysis as a terminal table, a Markdown file, a self-contained HTML page, or JSON."""

from __future__ import annotations

import html
import math
import textwrap
import time
from typing import Any

from simlab.compare.metrics import Estimate
from simlab.compare.stats import METRICS, Analysis


def _fmt(e: Estimate, digits: int = 2) -> str:
    if e.n == 0 or math.isnan(e.mean):
        return "–"
    if e.n == 1:
        return f"{e.mean:.{digits}f}"
    return f"{e.mean:.{digits}f} [{e.low:.{digits}f}, {e.high:.{digits}f}]"


def _diff(e: Estimate, digits: int = 2) -> str:
    if e.n == 0 or math.isnan(e.mean):
        return "–"
    mark = " *" if e.excludes_zero else ""
    return f"{e.mean:+.{digits}f} [{e.low:+.{digits}f}, {e.high:+.{digits}f}]{mark}"


def tables(a: Analysis) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table in the report."""
    out = []
    header = ["variant", "n"] + [METRICS[k][0] for k in METRICS]
    rows = [[v.name, str(v.samples)] + [_fmt(v.estimates[k]) for k in METRICS] for v in a.variants]
    out.append(("Per variant: mean [95% bootstrap interval] over samples", header, rows))
    if a.differences:
        base = a.variants[0].name
        rows = [[name, "–"] + [_diff(d[k]) for k in METRICS] for name, d in a.differences.items()]
        out.append((f"Difference from {base} (* interval excludes zero)", header, rows))
    if a.cross_logprob:
        names = [v.name for v in a.variants]
        rows = [[src] + [_fmt(a.cross_logprob[src][frame]) for frame in names] for src in names]
        out.append(
            (
                "Cross log-probability: replies of each row, teacher-forced under each column's frame "
                "(mean nats per token)",
                ["replies of \\ frame"] + names,
                rows,
            )
        )
    if a.divergence:
        rows = [
            [d["a"], d["b"], f"{d['kl_ab']:.3f}", f"{d['kl_ba']:.3f}", f"{d['jsd_bits']:.3f}"]
            for d in a.divergence
        ]
        out.append(
            (
                "Next-token distributions at the first reply (temperature 1)",
                ["A", "B", "KL(A||B) nats", "KL(B||A) nats", "JSD bits"],
                rows,
            )
        )
    return out


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
        lines += textwrap.wrap(title, width) if width else [title]
        for group in _column_groups(widths, width):
            lines.append("  ".join(header[i].ljust(widths[i]) for i in group))
            lines.append("  ".join("-" * widths[i] for i in group))
            lines += ["  ".join(r[i].ljust(widths[i]) for i in group).rstrip() for r in rows]
            lines.append("")
    for line in _first_tokens(a):
        lines += textwrap.wrap(line, width, subsequent_indent="    ") if width else [line]
    lines += ["", f"One sample per variant (turn {len(a.spec.turns)}; all of them are in the reports):"]
    for v in a.variants:
        if v.texts and v.texts[-1]:
            seed, text, finish = v.texts[-1][0]
            lines += textwrap.wrap(
                f"{v.name} (seed {seed}, {finish}): {' '.join(text.split())}",
                width=width or 80,
                subsequent_indent="    ",
                max_lines=4,
            )
    for n in a.notes:
        lines += textwrap.wrap(f"note: {n}", width, subsequent_indent="    ") if width else [f"note: {n}"]
    return "\n".join(lines).rstrip() + "\n"


def _column_groups(widths: list[int], width: int | None) -> list[list[int]]:
    """Column indices in groups that fit the width, each starting with column 0 (the names)."""
    if width is None or sum(widths) + 2 * (len(widths) - 1) <= width:
        return [list(range(len(widths)))]
    groups, current = [], [0]
    for i in range(1, len(widths)):
        if len(current) > 1 and sum(widths[j] + 2 for j in current) + widths[i] > width:
            groups.append(current)
            current = [0]
        current.append(i)
    return [*groups, current]


def _first_tokens(a: Analysis) -> list[str]:
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
    lines += [f"> {n}" for n in a.notes]
    first = _first_tokens(a)
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
                "metrics": {k: e.as_dict() for k, e in v.estimates.items()},
                "values": v.values,
                "replies": [
                    [{"seed": s, "text": t, "finish_reason": f} for s, t, f in turn] for turn in v.texts
                ],
            }
            for v in a.variants
        ],
        "differences": {
            name: {k: {**e.as_dict(), "excludes_zero": e.excludes_zero} for k, e in d.items()}
            for name, d in a.differences.items()
        },
        "cross_logprob": {
            src: {frame: e.as_dict() for frame, e in row.items()} for src, row in a.cross_logprob.items()
        },
        "divergence": a.divergence,
        "notes": a.notes,
    }


# -- HTML -------------------------------------------------------------------------------------

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}.sig{font-weight:bold;color:#b00}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plot{border:1px solid #eee;padding:6px}
.samples td{max-width:420px;white-space:pre-wrap}.seed{color:#888;font-size:12px}
.note{color:#555;font-style:italic}
"""


def _plot(a: Analysis, key: str) -> str:
    """Per variant: each sample's value as a dot, the mean as a bar and its interval as a line, on an
    axis with five labelled ticks; a rate (every value 0 or 1) as a bar of its mean with its interval;
    a metric with one value everywhere as that value, not a plot."""
    label, what = METRICS[key]
    all_values = [x for v in a.variants for x in v.values[key] if x == x]
    if not all_values:
        return ""
    head = f'<div class="plot"><b>{html.escape(label)}</b><br>'
    lo, hi = min(all_values), max(all_values)
    if hi == lo:
        return head + f"<p class='note'>every sample of every variant: {lo:.3g}</p></div>"
    rate = set(all_values) <= {0.0, 1.0}
    if rate:
        lo, hi = 0.0, 1.0
    width, row, left = 360, 26, 110
    height = row * len(a.variants) + 40

    def x(value: float) -> float:
        return left + (value - lo) / (hi - lo) * (width - left - 14)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(label)}">',
        f"<title>{html.escape(label)}: {html.escape(what)}</title>",
    ]
    axis = height - 22
    for k in range(5):  # ticks and light grid lines
        value = lo + (hi - lo) * k / 4
        parts.append(f'<line x1="{x(value):.1f}" x2="{x(value):.1f}" y1="8" y2="{axis}" stroke="#eee"/>')
        parts.append(
            f'<text x="{x(value):.1f}" y="{axis + 14}" font-size="10" text-anchor="middle">{value:.3g}</text>'
        )
    for i, v in enumerate(a.variants):
        y = 20 + i * row
        color = COLORS[i % len(COLORS)]
        parts.append(f'<text x="4" y="{y + 4}" font-size="11">{html.escape(v.name[:16])}</text>')
        e = v.estimates[key]
        if rate and e.n:
            parts.append(
                f'<rect x="{x(0):.1f}" y="{y - 7}" width="{x(e.mean) - x(0):.1f}" height="14" '
                f'fill="{color}" fill-opacity="0.6"/>'
            )
        elif not rate:
            for value in v.values[key]:
                parts.append(
                    f'<circle cx="{x(value):.1f}" cy="{y}" r="3" fill="{color}" fill-opacity="0.45"/>'
                )
        if e.n:
            parts.append(
                f'<line x1="{x(e.low):.1f}" x2="{x(e.high):.1f}" y1="{y + 9}" y2="{y + 9}" '
                f'stroke="{color}" stroke-width="2"/>'
            )
            if not rate:
                parts.append(
                    f'<rect x="{x(e.mean) - 1.5:.1f}" y="{y - 8}" width="3" height="19" fill="{color}"/>'
                )
    parts.append("</svg>")
    return head + "".join(parts) + "</div>"


def html_report(a: Analysis) -> str:
    esc = html.escape
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>simlab compare: {esc(a.spec.name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Compare: {esc(a.spec.name)}</h1>",
        f"<p>{len(a.variants)} variants × {a.spec.samples} samples × {len(a.spec.turns)} turn(s), base seed "
        f"{a.spec.seed}. Intervals are 95% bootstrap intervals over samples; "
        "<span class='sig'>bold red</span> differences exclude zero.</p>",
    ]
    for title, header, rows in tables(a):
        out.append(
            f"<h2>{esc(title)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
        )
        for r in rows:
            cells = "".join(
                f"<td class='sig'>{esc(c)}</td>" if c.endswith(" *") else f"<td>{esc(c)}</td>" for c in r
            )
            out.append(f"<tr>{cells}</tr>")
        out.append("</table>")
    out += [f"<p class='note'>{esc(n)}</p>" for n in a.notes]
    first = _first_tokens(a)
    if first:
        out.append(
            "<h2>Most likely first tokens</h2><ul>"
            + "".join(f"<li>{esc(line.split(': ', 1)[1])}</li>" for line in first)
            + "</ul>"
        )
    out.append("<h2>Distributions</h2><div class='plots'>" + "".join(_plot(a, k) for k in METRICS) + "</div>")
    out.append(
        "<dl>"
        + "".join(f"<dt>{esc(label)}</dt><dd>{esc(what)}</dd>" for label, what in METRICS.values())
        + "</dl>"
    )
    for t, turn in enumerate(a.spec.turns):
        out.append(
            f"<h2>Turn {t + 1}: {esc(turn)}</h2><table class='samples'><tr><th>#</th>"
            + "".join(f"<th>{esc(v.name)}</th>" for v in a.variants)
            + "</tr>"
        )
        for i in range(max((len(v.texts[t]) for v in a.variants), default=0)):
            cells = []
            for v in a.variants:
                if i < len(v.texts[t]):
                    seed, text, finish = v.texts[t][i]
                    cells.append(
                        f"<td><span class='seed'>seed {seed} · {esc(str(finish))}</span><br>{esc(text)}</td>"
                    )
                else:
                    cells.append("<td></td>")
            out.append(f"<tr><td>{i + 1}</td>{''.join(cells)}</tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)
