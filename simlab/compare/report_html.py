"""A sweep's analysis as a self-contained HTML page: the tables, a plot per metric, every sample."""

from __future__ import annotations

import html

from simlab.compare.report import INTERVALS, first_tokens, tables
from simlab.compare.stats import METRICS, PER_SAMPLE, Analysis

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f4f4f4}.sig{font-weight:bold;color:#b00}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plot{border:1px solid #eee;padding:6px}
.samples td{max-width:420px;white-space:pre-wrap}.seed{color:#888;font-size:12px}
.note{color:#555;font-style:italic}
"""


def _short(name: str, most: int = 28) -> str:
    """A variant's name in a plot's margin: whole, or its start and its end (where a steered
    variant's strength is) with an ellipsis between."""
    return name if len(name) <= most else f"{name[: most // 3]}…{name[-(most - most // 3 - 1) :]}"


def _plot(a: Analysis, key: str) -> str:
    """Per variant: each sample's value as a dot, the mean as a bar and its interval as a line, on an
    axis with five labelled ticks; a rate (every value 0 or 1) as a bar of its mean with its interval;
    a metric with one value everywhere as that value, not a plot."""
    label, what = METRICS[key]
    all_values = [x for v in a.variants for x in v.values[key] if x == x]
    head = f'<div class="plot"><b>{html.escape(label)}</b><br>'
    if not all_values:
        why = "every reply was cut at max tokens" if key == "length" else "nothing recorded it"
        return head + f"<p class='note'>no values: {why}</p></div>"
    lo, hi = min(all_values), max(all_values)
    if hi == lo:
        return head + f"<p class='note'>every sample of every variant: {lo:.3g}</p></div>"
    rate = set(all_values) <= {0.0, 1.0}
    if rate:
        lo, hi = 0.0, 1.0
    else:  # the axis holds every interval too
        bounds = [b for v in a.variants for b in (v.estimates[key].low, v.estimates[key].high) if b == b]
        lo, hi = min([lo, *bounds]), max([hi, *bounds])
    width, row, left = 440, 26, 190
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
        parts.append(f'<text x="4" y="{y + 4}" font-size="11">{html.escape(_short(v.name))}</text>')
        e = v.estimates[key]
        if rate and e.n:
            parts.append(
                f'<rect x="{x(0):.1f}" y="{y - 7}" width="{x(e.mean) - x(0):.1f}" height="14" '
                f'fill="{color}" fill-opacity="0.6"/>'
            )
        elif not rate:
            for value in (x for x in v.values[key] if x == x):  # a cut reply has no length: no dot
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


DOSE_PLOTS = (  # (what a row holds, the plot's title)
    ("trait", "trait: projection on the vector"),
    ("kl_unsteered", "KL to unsteered (nats/token)"),
    ("neutral_change", "neutral text: change (nats/token)"),
    ("kl_toward", "KL from the toward prompt (nats/token)"),
)


def _dose_plot(d, key: str, title: str) -> str:
    """One readout against strength: each mean as a dot joined in order, its interval as a vertical
    line; on the toward plot, the prompt-equivalent strength as a dashed line over its interval."""
    points = [(r.strength, getattr(r, key)) for r in d.rows]
    points = [(s, e) for s, e in points if e is not None and e.n and e.mean == e.mean]
    if key in ("kl_unsteered", "neutral_change"):  # zero at strength 0 by definition
        points = sorted([(0.0, None), *points], key=lambda p: p[0])
    if len(points) < 2:
        return ""
    xs = [s for s, _ in points]
    ys = [v for _, e in points for v in ((0.0,) if e is None else (e.mean, e.low, e.high)) if v == v]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    y_hi = y_hi if y_hi > y_lo else y_lo + 1
    width, height, left, bottom = 320, 200, 48, 26

    def x(v: float) -> float:
        return left + (v - x_lo) / ((x_hi - x_lo) or 1) * (width - left - 12)

    def y(v: float) -> float:
        return 10 + (y_hi - v) / (y_hi - y_lo) * (height - bottom - 10)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(title)}"><title>{html.escape(title)} against strength</title>'
    ]
    for k in range(5):
        v = y_lo + (y_hi - y_lo) * k / 4
        parts.append(f'<line x1="{left}" x2="{width - 8}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
        parts.append(
            f'<text x="{left - 4}" y="{y(v) + 3:.1f}" font-size="10" text-anchor="end">{v:.3g}</text>'
        )
    for s in xs:
        parts.append(
            f'<text x="{x(s):.1f}" y="{height - 8}" font-size="10" text-anchor="middle">{s:g}</text>'
        )
    eq = d.equivalent if key == "kl_toward" else None
    if eq and eq["low"] == eq["low"]:
        parts.append(
            f'<rect x="{x(eq["low"]):.1f}" y="10" width="{max(1.0, x(eq["high"]) - x(eq["low"])):.1f}" '
            f'height="{height - bottom - 10}" fill="#2ca02c" fill-opacity="0.15"/>'
        )
    if eq:
        parts.append(
            f'<line x1="{x(eq["strength"]):.1f}" x2="{x(eq["strength"]):.1f}" y1="10" '
            f'y2="{height - bottom}" stroke="#2ca02c" stroke-dasharray="4 3"/>'
        )
    line = " ".join(f"{x(s):.1f},{y(0.0 if e is None else e.mean):.1f}" for s, e in points)
    parts.append(f'<polyline points="{line}" fill="none" stroke="{COLORS[0]}" stroke-width="1.5"/>')
    for s, e in points:
        if e is not None and e.low == e.low:
            parts.append(
                f'<line x1="{x(s):.1f}" x2="{x(s):.1f}" y1="{y(e.low):.1f}" y2="{y(e.high):.1f}" '
                f'stroke="{COLORS[0]}" stroke-width="2"/>'
            )
        parts.append(
            f'<circle cx="{x(s):.1f}" cy="{y(0.0 if e is None else e.mean):.1f}" r="3" fill="{COLORS[0]}"/>'
        )
    parts.append("</svg>")
    return f'<div class="plot"><b>{html.escape(title)}</b><br>{"".join(parts)}</div>'


def html_report(a: Analysis) -> str:
    esc = html.escape
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>simlab compare: {esc(a.spec.name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Compare: {esc(a.spec.name)}</h1>",
        f"<p>{len(a.variants)} variants × {a.spec.samples} samples × {len(a.spec.turns)} turn(s), base seed "
        f"{a.spec.seed}. 95% intervals ({esc(INTERVALS)}); "
        "<span class='sig'>bold red</span> differences survive Holm's correction at 5%.</p>",
    ]
    for title, header, rows in tables(a):
        out.append(
            f"<h2>{esc(title)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
        )
        for r in rows:
            cells = "".join(
                f"<td class='sig'>{esc(c)}</td>" if " *" in c else f"<td>{esc(c)}</td>" for c in r
            )
            out.append(f"<tr>{cells}</tr>")
        out.append("</table>")
    out += [f"<p class='note'>{esc(n)}</p>" for n in a.notes]
    first = first_tokens(a)
    if first:
        out.append(
            "<h2>Most likely first tokens</h2><ul>"
            + "".join(f"<li>{esc(line.split(': ', 1)[1])}</li>" for line in first)
            + "</ul>"
        )
    for d in a.dose:
        plots = "".join(_dose_plot(d, key, title) for key, title in DOSE_PLOTS)
        out.append(
            f"<h2>Dose-response: {esc(d.vector)} on {esc(d.base)}</h2><div class='plots'>{plots}</div>"
        )
    out.append(
        "<h2>Distributions</h2><div class='plots'>" + "".join(_plot(a, k) for k in PER_SAMPLE) + "</div>"
    )
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
