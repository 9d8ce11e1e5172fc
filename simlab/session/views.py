"""Terminal views of a session: the tree (current path highlighted), a path, two branches side by side."""

from __future__ import annotations

import shutil
import textwrap

from simlab.frame.framing import Framing
from simlab.frame.render import PIECE, framing_of
from simlab.session.tree import Node, Tree


class Style:
    """ANSI styling, or plain markers when colour is off (NO_COLOR or not a terminal)."""

    def __init__(self, color: bool):
        self.color = color

    def wrap(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def dim(self, text: str) -> str:
        return self.wrap("2", text)

    def current(self, text: str) -> str:
        return self.wrap("1;36", text)


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(0, width - 1)] + "…"


def turn_label(node: Node, framing: Framing | None = None) -> str:
    """How the node's turn is headed: as its framing's template writes it ("KEEPER.", ">"), else
    "Speaker:" (also for templates that write no label at all, so a tree line says who speaks)."""
    if node.role == "frame":
        return "frame"
    if not node.speaker:
        return node.role
    if PIECE in node.tags:  # the rest of a turn split in two: it goes on the turn above
        return "…"
    head = framing.head(node.role, node.speaker).strip() if framing is not None else ""
    return head if head and "\n" not in head else f"{node.speaker}:"


def steer_label(node: Node) -> str:
    """What a reply was steered with, as --steer writes it (`keeper:0.5@10-12`, several joined by
    +); "" for none."""
    terms = (node.steer or {}).get("terms") or []
    return " + ".join(
        f"{t.get('vector')}:{t.get('strength', 0):g}@{_runs(t.get('blocks') or [])}" for t in terms
    )


def _runs(blocks: list) -> str:
    out: list[str] = []
    for b in sorted(int(x) for x in blocks):
        if out and out[-1].split("-")[-1] == str(b - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{b}"
        else:
            out.append(str(b))
    return ",".join(out)


def said(node: Node, framing: Framing | None = None) -> str:
    """What goes before a turn's text on one line: its label and a space, or "…" for the rest of a
    turn split in two (it goes on where the part before stopped, maybe mid-word)."""
    label = turn_label(node, framing)
    return label + (" " if label != "…" or node.text[:1].isspace() else "")


def node_marks(node: Node) -> str:
    """★ bookmark, ✓ canonical, ◆ a block kept from a multiverse (chosen, not sampled)."""
    return (
        ("★" if "bookmark" in node.tags else "")
        + ("✓" if "canonical" in node.tags else "")
        + ("◆" if node.origin == "chosen" else "")
    )


def render_tree(tree: Tree, style: Style, width: int | None = None, show_hidden: bool = False) -> list[str]:
    """One line per node: id, sibling position, marks (node_marks), speaker, text."""
    width = width or shutil.get_terminal_size((100, 20)).columns
    on_path = {n.id for n in tree.path(tree.cursor)} if tree.cursor else set()
    lines: list[str] = []

    def walk(node: Node, prefix: str, last: bool, is_root: bool, framing: Framing | None) -> None:
        siblings = tree.children(node.parent, include_hidden=show_hidden) if not is_root else tree.roots
        branch = "" if is_root else ("└─ " if last else "├─ ")
        position = (
            f"[{[s.id for s in siblings].index(node.id) + 1}/{len(siblings)}] " if len(siblings) > 1 else ""
        )
        marks = node_marks(node)
        marks += "✗" if node.hidden else ""
        cursor = " ◀" if node.id == tree.cursor else ""
        head = f"{tree.short(node.id)} {position}{marks + ' ' if marks else ''}{said(node, framing)}"
        room = width - len(prefix) - len(branch) - len(head) - len(cursor) - 1
        text = head + _one_line(node.text, room - 2) + cursor
        if node.id in on_path:  # the current path: coloured, or marked when colour is off
            text = style.current(text) if style.color else "» " + text
        elif node.hidden:
            text = style.dim(text)
        lines.append(style.dim(prefix + branch) + text)
        kids = tree.children(node.id, include_hidden=show_hidden)
        child_prefix = prefix + ("" if is_root else ("   " if last else "│  "))
        for i, kid in enumerate(kids):
            walk(kid, child_prefix, i == len(kids) - 1, False, framing)

    for root in tree.roots:
        walk(root, "", True, True, Framing.from_dict(root.framing) if root.role == "frame" else None)
    return lines


def render_transcript(tree: Tree, node_id: str, style: Style) -> list[str]:
    """A path as the conversation reads, with each node's short id in the margin."""
    lines = []
    path = tree.path(node_id)
    framing = framing_of(path)
    for node in path:
        margin = style.dim(tree.short(node.id) + " ")
        if node.role == "frame":
            lines += [margin + style.dim("[frame]")] + [
                "         " + ln for ln in node.text.rstrip("\n").split("\n")
            ]
        else:
            lines.append(margin + said(node, framing) + node.text.strip())
    return lines


def render_compare(tree: Tree, a: str, b: str, style: Style, width: int | None = None) -> list[str]:
    """The shared part once, then the two branches after they part, in two columns."""
    width = width or shutil.get_terminal_size((100, 20)).columns
    path_a, path_b = tree.path(a), tree.path(b)
    frame_a, frame_b = framing_of(path_a), framing_of(path_b)
    shared = 0
    while shared < min(len(path_a), len(path_b)) and path_a[shared].id == path_b[shared].id:
        shared += 1
    lines = [
        style.dim(
            f"shared: {shared} node(s), up to {tree.short(path_a[shared - 1].id)}"
            if shared
            else "no shared history"
        )
    ]
    if shared:
        last = path_a[shared - 1]
        lines.append(style.dim(f"  … {said(last, frame_a)}{_one_line(last.text, width - 20)}"))
    col = max(20, (width - 3) // 2)

    def column(nodes: list[Node], title: str, framing: Framing) -> list[str]:
        out = [title]
        for node in nodes:
            about = [
                f"seed {node.seed}" if node.seed is not None else "",
                node.persona or "",
                steer_label(node),
            ]
            extra = f" ({', '.join(a for a in about if a)})" if node.role == "model" and any(about) else ""
            out += textwrap.wrap(f"{said(node, framing)}{node.text.strip()}{extra}", col) or [""]
        return out

    left = column(path_a[shared:], f"A {tree.short(path_a[-1].id)}", frame_a)
    right = column(path_b[shared:], f"B {tree.short(path_b[-1].id)}", frame_b)
    for k in range(max(len(left), len(right))):
        l_text = left[k] if k < len(left) else ""
        r_text = right[k] if k < len(right) else ""
        lines.append(f"{l_text:<{col}} │ {r_text}")
    return lines
