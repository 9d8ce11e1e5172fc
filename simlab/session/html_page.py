"""The page `session.html` fills: HTML, CSS and a small script, nothing fetched from anywhere.

Every text from the session reaches the page through `textContent` (never markup), from the JSON
in the `data` script element.
"""

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="simlab">
<title>{{TITLE}} · simlab</title>
<style>
  :root { --fg: #1d1d1f; --dim: #8a8a8e; --line: #d9d9de; --hi: #fff3bf; --sel: #dbe9ff; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: var(--fg); display: grid;
         grid-template-columns: minmax(220px, 30%) 1fr; height: 100vh; }
  header { grid-column: 1 / -1; padding: 6px 12px; border-bottom: 1px solid var(--line); }
  header h1 { font-size: 16px; margin: 0; display: inline; }
  header span { color: var(--dim); margin-left: 8px; }
  nav { overflow: auto; border-right: 1px solid var(--line); padding: 6px 4px; }
  nav ul { list-style: none; margin: 0; padding-left: 14px; }
  nav > ul { padding-left: 0; }
  nav a { display: block; padding: 1px 4px; border-radius: 3px; color: inherit; text-decoration: none;
          white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
  nav a:hover { background: #f0f0f3; }
  nav a.on-path { font-weight: 600; }
  nav a.selected { background: var(--sel); }
  nav a.hidden { color: var(--dim); font-style: italic; }
  nav .marks { color: #c08a00; margin-right: 3px; }
  main { overflow: auto; padding: 10px 16px; height: calc(100vh - 34px); }
  #text { white-space: pre-wrap; font: 14px/1.55 ui-monospace, monospace; border: 1px solid var(--line);
          padding: 10px; border-radius: 4px; }
  #text .node:hover { background: #f6f6f8; cursor: pointer; }
  #text .current { background: var(--hi); }
  #text .frame { color: #555; }
  .tok { border-bottom: 2px solid transparent; }
  .tok[data-alts]:hover { outline: 1px solid #888; }
  #siblings { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 8px; }
  #siblings div { border: 1px solid var(--line); border-radius: 4px; padding: 6px; white-space: pre-wrap;
                  font: 13px/1.4 ui-monospace, monospace; cursor: pointer; max-height: 14em; overflow: auto; }
  #siblings div.current { border-color: #3b7ddd; background: #f4f8ff; }
  table { border-collapse: collapse; font-size: 13px; }
  td, th { border: 1px solid var(--line); padding: 2px 6px; text-align: left; vertical-align: top; }
  #meta td { max-width: 70ch; overflow-wrap: anywhere; font: 12px ui-monospace, monospace; }
  #heatmap td { width: 28px; height: 16px; padding: 0; }
  #heatmap th { font-weight: normal; font-family: ui-monospace, monospace; white-space: nowrap; }
  h2 { font-size: 14px; margin: 16px 0 6px; }
  .note { color: var(--dim); font-size: 12px; }
  #mv-box { position: relative; height: 360px; border: 1px solid var(--line); border-radius: 4px;
            overflow: hidden; }
  .mvb { position: absolute; border: 1px solid #fff; background: hsl(210, 60%, 88%); overflow: hidden;
         font: 12px/1.2 ui-monospace, monospace; white-space: pre; padding: 0 3px; cursor: pointer; }
  .mvb:hover { background: hsl(210, 70%, 80%); }
  .mvb.leaf { cursor: default; background: hsl(210, 30%, 93%); }
  #mv-crumbs a { cursor: pointer; color: #3b7ddd; }
  #tip { position: fixed; display: none; background: #222; color: #fff; padding: 4px 8px; border-radius: 4px;
         font: 12px/1.4 ui-monospace, monospace; white-space: pre; pointer-events: none; z-index: 9; }
</style>
</head>
<body>
<header><h1 id="title"></h1><span id="summary"></span>
  <label class="note"><input type="checkbox" id="show-hidden"> show hidden nodes</label></header>
<nav id="tree" aria-label="the session's tree"></nav>
<main>
  <div id="text" aria-label="the selected path as the model reads it"></div>
  <p class="note" id="legend">Underline colour: the probability the model gave each token of the selected
    node (green likely, red unlikely); hover a token for the alternatives. Click any part to select it.</p>
  <h2 id="siblings-head">Siblings</h2><div id="siblings"></div>
  <h2>Node</h2><table id="meta"></table>
  <div id="trace"></div>
  <div id="multiverse"></div>
</main>
<div id="tip"></div>
<script type="application/json" id="data">{{DATA}}</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const byId = new Map(data.nodes.map(n => [n.id, n]));
const kids = new Map();
for (const n of data.nodes) {
  if (!kids.has(n.parent)) kids.set(n.parent, []);
  kids.get(n.parent).push(n);
}
const showHidden = document.getElementById("show-hidden");
let selected = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function pathTo(id) {
  const path = [];
  for (let n = byId.get(id); n; n = byId.get(n.parent)) path.unshift(n);
  return path;
}
function visible(n) { return showHidden.checked || !n.hidden; }
function preview(n) {
  const t = (n.text || "(empty)").replace(/\n/g, "⏎");
  return t.length > 80 ? t.slice(0, 80) + "…" : t;
}
function colour(p) { return `hsl(${Math.round(120 * p)}, 70%, 42%)`; }

function drawTree() {
  const nav = document.getElementById("tree");
  nav.replaceChildren();
  const onPath = new Set(selected ? pathTo(selected).map(n => n.id) : []);
  const list = (parent) => {
    const ul = el("ul");
    for (const n of (kids.get(parent) || []).filter(visible)) {
      const li = el("li"), a = el("a");
      a.href = "#" + n.id;
      a.dataset.id = n.id;
      a.title = `${n.short} ${n.role}${n.speaker ? " " + n.speaker : ""}`;
      const marks = (n.tags.includes("bookmark") ? "★" : "") + (n.tags.includes("canonical") ? "✓" : "") +
        (n.meta.origin === "chosen" ? "◆" : "");
      if (marks) a.append(el("span", marks, "marks"));
      const said = !n.label ? "" : n.label === "…" ? n.label : n.label + " ";  // as the transcript heads it
      a.append(document.createTextNode(said + preview(n)));
      a.classList.toggle("on-path", onPath.has(n.id));
      a.classList.toggle("selected", n.id === selected);
      a.classList.toggle("hidden", n.hidden);
      li.append(a);
      if ((kids.get(n.id) || []).some(visible)) li.append(list(n.id));
      ul.append(li);
    }
    return ul;
  };
  nav.append(list(null));
}

function tokenSpans(n) {
  const frag = document.createDocumentFragment();
  for (const t of n.tokens) {
    const s = el("span", t.text, "tok");
    if (t.p !== null) {
      s.style.borderBottomColor = colour(t.p);
      const alts = t.alts.map(([a, p]) => `${JSON.stringify(a)}  ${p.toFixed(3)}`);
      s.dataset.alts = [`p = ${t.p.toFixed(3)}`, ...alts].join("\n");
    }
    frag.append(s);
  }
  return frag;
}

function drawText(path) {
  const box = document.getElementById("text");
  box.replaceChildren();
  for (const n of path) {
    const span = el("span", null, "node" + (n.role === "frame" ? " frame" : ""));
    span.dataset.id = n.id;
    span.append(document.createTextNode(n.before));
    const body = el("span", null, n.id === selected ? "current" : "");
    if (n.id === selected && n.tokens) body.append(tokenSpans(n));
    else body.textContent = n.text;
    span.append(body, document.createTextNode(n.after));
    box.append(span);
  }
}

function drawSiblings(n) {
  const box = document.getElementById("siblings");
  box.replaceChildren();
  const siblings = (kids.get(n.parent) || []).filter(s => visible(s) || s.id === n.id);
  document.getElementById("siblings-head").hidden = siblings.length < 2;
  if (siblings.length < 2) return;
  for (const s of siblings) {
    const d = el("div", s.text || "(empty)", s.id === n.id ? "current" : "");
    d.dataset.id = s.id;
    d.title = s.short;
    box.append(d);
  }
}

function drawMeta(n) {
  const table = document.getElementById("meta");
  table.replaceChildren();
  const role = n.role + (n.speaker ? ` (${n.speaker})` : "");
  const rows = { id: n.id, role: role, tags: n.tags.join(", "), ...n.meta };
  if (n.hidden) rows.hidden = "yes";
  for (const [k, v] of Object.entries(rows)) {
    if (v === "" || v === null || v === undefined) continue;
    const tr = el("tr");
    let shown = typeof v === "object" ? JSON.stringify(v) : String(v);
    if (k === "created" && typeof v === "number") shown = new Date(v * 1000).toISOString();
    tr.append(el("th", k), el("td", shown));
    table.append(tr);
  }
}

function drawTrace(n) {
  const box = document.getElementById("trace");
  box.replaceChildren();
  const h = n.heatmap;
  if (!h) return;
  box.append(el("h2", "Trace"), el("p", h.title, "note"));
  const table = el("table");
  table.id = "heatmap";
  const head = el("tr");
  head.append(el("th", ""));
  for (const c of h.columns) head.append(el("th", c));
  table.append(head);
  h.rows.forEach((row, i) => {
    const tr = el("tr");
    tr.append(el("th", row));
    const values = h.values[i], top = Math.max(...values.map(Math.abs), 1e-9);
    values.forEach((v, j) => {
      const td = el("td");
      td.style.background = `rgba(200, 60, 20, ${(Math.abs(v) / top).toFixed(3)})`;
      td.title = `${row} · ${h.columns[j]}: ${v.toFixed(3)}`;
      tr.append(td);
    });
    table.append(tr);
  });
  box.append(table);
}

// The block multiverse: each block a rectangle as tall as its probability (of the zoomed block),
// depth from left to right, children stacked inside their parent's height; a click zooms in.
let universe = null, zoomPath = [];
function drawMultiverse(n) {
  const box = document.getElementById("multiverse");
  box.replaceChildren();
  const here = (data.multiverses || {})[n.id] || (n.role === "model" && (data.multiverses || {})[n.parent]);
  if (!here || !here.length) return;
  const u = here[here.length - 1];
  if (universe !== u) { universe = u; zoomPath = []; }
  const zoom = zoomPath.length ? zoomPath[zoomPath.length - 1] : { t: "", p: 1, c: u.blocks };
  const columns = Math.max(1, u.depth - zoomPath.length);
  box.append(el("h2", `Multiverse (${here.length > 1 ? here.length + " saved, the last" : "saved here"})`));
  const crumbs = el("p", "", "note");
  crumbs.id = "mv-crumbs";
  const whole = el("a", "the whole multiverse");
  whole.onclick = () => { zoomPath = []; drawMultiverse(n); };
  crumbs.append(whole);
  zoomPath.forEach((b, i) => {
    const a = el("a", JSON.stringify(b.t));
    a.onclick = () => { zoomPath = zoomPath.slice(0, i + 1); drawMultiverse(n); };
    crumbs.append(" ▸ ", a);
  });
  const stage = el("div");
  stage.id = "mv-box";
  function place(blocks, level, top, trail) {
    for (const b of blocks) {
      const share = b.p / zoom.p, d = el("div", `${JSON.stringify(b.t)} ${(100 * share).toFixed(1)}%`, "mvb");
      d.style.left = `${(100 * level) / columns}%`;
      d.style.width = `${100 / columns}%`;
      d.style.top = `${(100 * top).toFixed(4)}%`;
      d.style.height = `${(100 * share).toFixed(4)}%`;
      d.dataset.share = share;
      const text = zoomPath.concat(trail, [b]).map(x => x.t).join("");
      d.title = `${text} · ${(100 * share).toFixed(2)}% of the view, ${(100 * b.p).toFixed(2)}% in all`;
      if (b.c.length) d.onclick = () => zoomInto(b);
      else d.classList.add("leaf");
      stage.append(d);
      place(b.c, level + 1, top, trail.concat([b]));
      top += share;
    }
  }
  function zoomInto(b) {
    const chain = [];
    (function find(blocks, trail) {
      for (const x of blocks) {
        if (x === b) { chain.push(...trail, x); return true; }
        if (find(x.c, trail.concat([x]))) return true;
      }
      return false;
    })(u.blocks, []);
    zoomPath = chain;
    drawMultiverse(n);
  }
  place(zoom.c, 0, 0, []);
  const covered = [];
  let level = zoom.c;
  for (let d = zoomPath.length + 1; level.length; d++) {
    covered.push(`${(100 * level.reduce((s, b) => s + b.p, 0) / zoom.p).toFixed(1)}% at depth ${d}`);
    level = level.flatMap(b => b.c);
  }
  const of = zoomPath.length ? ` of ${JSON.stringify(zoomPath.map(x => x.t).join(""))}` : "";
  const covers = covered.join(", ") || "nothing deeper above the cutoff";
  const line = el("p", `covers ${covers}${of}; ${u.settings}`, "note");
  line.id = "mv-covered";
  box.append(crumbs, stage, line);
}

function select(id) {
  if (!byId.has(id)) return;
  selected = id;
  const n = byId.get(id);
  if (n.hidden && !showHidden.checked) showHidden.checked = true;
  drawTree();
  drawText(pathTo(id));
  document.getElementById("legend").hidden = !n.tokens;
  drawSiblings(n);
  drawMeta(n);
  drawTrace(n);
  drawMultiverse(n);
  if (location.hash.slice(1) !== id) history.replaceState(null, "", "#" + id);
}

document.addEventListener("click", (event) => {
  const target = event.target.closest("[data-id]");
  if (!target) return;
  event.preventDefault();
  select(target.dataset.id);
});
const tip = document.getElementById("tip");
document.addEventListener("mouseover", (event) => {
  const t = event.target.closest("[data-alts]");
  tip.style.display = t ? "block" : "none";
  if (t) {
    tip.textContent = t.dataset.alts;
    const r = t.getBoundingClientRect();
    tip.style.left = `${Math.min(r.left, innerWidth - 260)}px`;
    tip.style.top = `${r.bottom + 4}px`;
  }
});
showHidden.addEventListener("change", () => select(selected));
window.addEventListener("hashchange", () => select(location.hash.slice(1)));

document.getElementById("title").textContent = data.name;
const shown = data.nodes.filter(n => !n.hidden).length;
document.getElementById("summary").textContent =
  `${data.nodes.length} nodes (${data.nodes.length - shown} hidden) · exported by simlab`;
const first = location.hash.slice(1);
select(byId.has(first) ? first : data.cursor || (data.roots[0] || null));
</script>
</body>
</html>
"""
