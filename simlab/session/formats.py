"""Sessions in other formats: Markdown (one path), YAML (whole tree), and the original Loom's JSON.

Loom (socketteer/loom) keeps a nested tree whose path concatenation is the document; simlab
exports each node's rendered turn as Loom `text` and keeps its own fields under `meta.simlab`,
so a tree survives simlab -> Loom -> simlab exactly, while Loom shows the same document.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simlab import safe_yaml
from simlab.errors import BadInput, SessionError, SimlabError, TreeError
from simlab.frame.render import render_path, turns
from simlab.session import loom
from simlab.session.html import to_html
from simlab.session.journal import load_tree, state_records
from simlab.session.store import Session, SessionStore
from simlab.session.tree import Node, Tree

IMPORT_LIMIT = 256 * 1024 * 1024  # a Loom or simlab export; a 10,000-node session is ~15 MB


def to_markdown(session: Session, node_id: str | None = None) -> str:
    """One path (to the cursor by default) as a readable Markdown transcript."""
    tree = session.tree
    target = node_id or tree.cursor
    if target is None:
        return f"# {session.name}\n\n(empty session)\n"
    path = tree.path(tree.resolve(target).id)
    models = sorted(
        {f"{n.model} ({n.model_revision[:12]})" if n.model_revision else n.model for n in path if n.model}
    )
    lines = [f"# {session.name}", ""]
    if models:
        lines += [f"*Replies by {', '.join(models)}.*", ""]
    if not any(n.speaker for n in path):  # a Loom document: one flowing text, not turns
        return "\n".join(lines) + "\n" + render_path(path).rstrip("\n") + "\n"
    for group in turns(path):  # a turn split into pieces in the Loom editor is one turn here too
        node, text = group[0], "".join(n.text for n in group)
        if node.role == "frame":
            lines += ["```text", node.text.rstrip("\n"), "```", ""]
        elif node.role == "note":
            lines += [f"> *Note:* {node.text}", ""]
        else:
            who = node.speaker or node.role
            seeds = [n.seed for n in group if n.seed is not None]
            extra = f" <sub>seed {seeds[0]}</sub>" if seeds else ""
            lines += [f"**{who}:** {text.strip()}{extra}", ""]
    return "\n".join(lines)


def to_yaml(session: Session) -> str:
    import yaml

    records = state_records(session.name, session.tree)
    data = {
        "simlab_session": 1,
        "name": session.name,
        "cursor": session.tree.cursor,
        "nodes": [r["node"] for r in records if r["type"] == "node"],
    }
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def to_loom(session: Session) -> dict[str, Any]:
    """The session as a Loom JSON tree (session.loom)."""
    return loom.to_loom(session.tree)


FORMATS = ("md", "yaml", "loom", "html")


def render(session: Session, fmt: str, node_id: str | None = None, heatmaps: dict | None = None) -> str:
    """The session as text: md (the path to node_id, default the cursor), yaml, loom or html (the
    whole tree; html with the traced nodes' `heatmaps`)."""
    if fmt == "html":
        return to_html(session, heatmaps)
    if fmt == "md":
        return to_markdown(session, node_id)
    if fmt == "yaml":
        return to_yaml(session)
    if fmt == "loom":
        return json.dumps(to_loom(session), ensure_ascii=False, indent=2) + "\n"
    raise SessionError(f"unknown export format {fmt!r}; use {', '.join(FORMATS)}")


def write_text(path: Path, text: str, what: str) -> Path:
    """An export written to a file; a failure is one line naming the file."""
    path = Path(path).expanduser()
    try:
        path.write_text(text, encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise SimlabError(f"{what}: cannot write {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return path


def yaml_to_tree(data: dict, where: str) -> Tree:
    tree = Tree()
    nodes = data.get("nodes")
    if not isinstance(nodes, list):
        raise SessionError(f"{where}: 'nodes' must be a list of node records")
    for i, record in enumerate(nodes):
        try:
            tree.add(Node.from_record(record))
        except (TreeError, TypeError, ValueError, AttributeError) as exc:
            raise SessionError(f"{where}: nodes[{i}] is malformed ({exc})") from None
    cursor = data.get("cursor")
    tree.cursor = cursor if cursor in tree.nodes else (tree.leaf(tree.roots[0].id).id if tree.roots else None)
    return tree


def import_file(store: SessionStore, path: Path, name: str | None = None) -> Session:
    """Import a Loom JSON tree, a simlab YAML/JSON export or a session file as a new session."""
    where = str(path)
    try:
        text = safe_yaml.read_text(path, "a session export", limit=IMPORT_LIMIT)
    except BadInput as exc:
        raise SessionError(str(exc)) from None
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write: still JSON
    if text.startswith('{"type":"session"') or path.suffix == ".jsonl":
        # a session file (`/export jsonl`, or one copied out of a folder): a damaged one gets the
        # session reader's own line about it
        tree, problems = load_tree(path)
        return _store_tree(store, tree, name or _name_from(path, store), problems)
    try:
        data = json.loads(text)
    except RecursionError:
        raise SessionError(f"{where}: nested too deeply to read") from None
    except ValueError:
        try:
            data = safe_yaml.compose_and_load(text, where)[0]
        except BadInput:
            raise SessionError(
                f"{where}: neither JSON nor YAML; expected a Loom tree, a simlab export or a "
                "simlab session (.jsonl)"
            ) from None
    if isinstance(data, dict) and "simlab_session" in data:
        tree = yaml_to_tree(data, where)
    else:
        tree = loom.loom_to_tree(data, where)
    return _store_tree(store, tree, name or _name_from(path, store))


def _store_tree(store: SessionStore, tree: Tree, name: str, problems: list[str] = ()) -> Session:
    session = store.create(name)
    session.problems = list(problems)
    with session:
        order = []
        stack = [r.id for r in reversed(tree.roots)]
        while stack:  # parents before children, so the file loads in one pass
            node = tree.nodes[stack.pop()]
            order.append(node)
            stack.extend(c.id for c in reversed(tree.children(node.id, include_hidden=True)))
        for node in order:
            session.add(node)
        if tree.cursor:
            session.goto(tree.cursor)
    return session


def _name_from(path: Path, store: SessionStore) -> str:
    """The session name a file gets without --name: its own name, made a usable one. A name taken
    is refused, as `personas import` refuses one (a second import is more often a slip than a wish)."""
    import re

    name = re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).strip("._-")[:80] or "imported"
    if store.exists(name):
        raise SessionError(
            f"session {name!r} already exists in {store.folder}; import it under another name with "
            f"--name NAME (or remove the old one: simlab sessions rm {name})"
        )
    return name
