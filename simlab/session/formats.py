"""Sessions in other formats: Markdown (one path), YAML (whole tree), and the original Loom's JSON.

Loom (socketteer/loom) keeps a nested tree whose path concatenation is the document; simlab
exports each node's rendered turn as Loom `text` and keeps its own fields under `meta.simlab`,
so a tree survives simlab -> Loom -> simlab exactly, while Loom shows the same document.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from simlab import safe_yaml
from simlab.errors import BadInput, SessionError, SimlabError, TreeError
from simlab.frame.framing import Framing
from simlab.frame.render import framing_of, render_node
from simlab.session.journal import load_tree, state_records
from simlab.session.store import Session, SessionStore
from simlab.session.tree import Node, Tree

LOOM_ROOT_ID = "simlab-synthetic-root"
IMPORT_LIMIT = 256 * 1024 * 1024  # a Loom or simlab export; a 10,000-node session is ~15 MB


def to_markdown(session: Session, node_id: str | None = None) -> str:
    """One path (to the cursor by default) as a readable Markdown transcript."""
    tree = session.tree
    target = node_id or tree.cursor
    if target is None:
        return f"# {session.name}\n\n(empty session)\n"
    path = tree.path(tree.resolve(target).id)
    models = sorted({f"{n.model} ({(n.model_revision or '?')[:12]})" for n in path if n.model})
    lines = [f"# {session.name}", ""]
    if models:
        lines += [f"*Replies by {', '.join(models)}.*", ""]
    for node in path:
        if node.role == "frame":
            lines += ["```text", node.text.rstrip("\n"), "```", ""]
        elif node.role == "note":
            lines += [f"> *Note:* {node.text}", ""]
        else:
            who = node.speaker or node.role
            extra = f" <sub>seed {node.seed}</sub>" if node.seed is not None else ""
            lines += [f"**{who}:** {node.text.strip()}{extra}", ""]
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
    """The session as a Loom JSON tree (one root; several roots hang under a synthetic one)."""
    tree = session.tree

    def convert(node: Node, framing: Framing) -> dict[str, Any]:
        tags = sorted(node.tags | ({"archived"} if node.hidden else set()))
        meta: dict[str, Any] = {
            "creation_timestamp": node.created,
            "source": "AI" if node.role == "model" else "prompt",
            "modified": node.origin == "edited",
            "origin": node.origin,
            "simlab": {k: v for k, v in node.to_record().items() if k != "parent"},
        }
        if node.token_ids:
            meta["generation"] = {
                "text": node.text,
                "model": node.model,
                "finish_reason": node.finish_reason,
                "logprobs": {
                    "tokens": [alts[0][1] if alts else "" for alts in node.top] or None,
                    "token_logprobs": list(node.logprobs),
                    "top_logprobs": [{t: lp for _, t, lp in alts} for alts in node.top],
                },
            }
        return {
            "id": node.id,
            "text": render_node(node, framing),
            "parent_id": node.parent,
            "open": True,
            "visited": True,
            "tags": tags,
            "meta": meta,
            "children": [convert(c, framing) for c in tree.children(node.id, include_hidden=True)],
        }

    roots = [convert(r, framing_of([r])) for r in tree.roots]
    if len(roots) == 1:
        root = roots[0]
    else:
        root = {
            "id": LOOM_ROOT_ID,
            "text": "",
            "parent_id": None,
            "open": True,
            "visited": True,
            "tags": [],
            "meta": {"source": "prompt"},
            "children": roots,
        }
        for child in roots:
            child["parent_id"] = LOOM_ROOT_ID
    canonical = [n.id for n in tree.nodes.values() if "canonical" in n.tags]
    return {
        "root": root,
        "chapters": {},
        "canonical": canonical,
        "memories": {},
        "summaries": {},
        "model_responses": {},
        "generation_settings": {},
        "tags": {
            "bookmark": {
                "name": "bookmark",
                "scope": "node",
                "hide": False,
                "show_only": False,
                "toggle_key": "b",
                "icon": "star",
            }
        },
        "selected_node_id": tree.cursor,
    }


FORMATS = ("md", "yaml", "loom")


def render(session: Session, fmt: str, node_id: str | None = None) -> str:
    """The session as text: md (the path to node_id, default the cursor), yaml or loom (the whole tree)."""
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


def loom_to_tree(data: Any, where: str) -> Tree:
    """Build a Tree from Loom JSON; a wrong shape is a SessionError naming the place."""
    if not isinstance(data, dict) or not isinstance(data.get("root"), dict):
        raise SessionError(f"{where}: not a Loom tree (expected an object with a 'root' node)")
    tree = Tree()
    canonical = set(data.get("canonical") or []) if isinstance(data.get("canonical"), list) else set()
    stack: list[tuple[dict, str | None, str]] = [(data["root"], None, "root")]
    while stack:
        raw, parent, at = stack.pop()
        if not isinstance(raw, dict) or not isinstance(raw.get("text", ""), str):
            raise SessionError(f"{where}: Loom node at {at} is not an object with a text string")
        children = raw.get("children", [])
        if not isinstance(children, list):
            raise SessionError(f"{where}: Loom node at {at}: 'children' must be a list")
        node_id = str(raw.get("id") or "")
        if node_id == LOOM_ROOT_ID:
            stack.extend((c, None, f"{at}.children[{i}]") for i, c in reversed(list(enumerate(children))))
            continue
        node = _loom_node(raw, parent, canonical, at, where)
        if node.id in tree.nodes:
            raise SessionError(f"{where}: Loom node id {node.id} appears twice (at {at})")
        tree.add(node)
        stack.extend((c, node.id, f"{at}.children[{i}]") for i, c in reversed(list(enumerate(children))))
    selected = data.get("selected_node_id")
    if isinstance(selected, str) and selected in tree.nodes:
        tree.cursor = selected
    elif tree.nodes:
        tree.cursor = tree.leaf(tree.roots[0].id).id
    return tree


def _loom_node(raw: dict, parent: str | None, canonical: set, at: str, where: str) -> Node:
    meta = raw.get("meta") if isinstance(raw.get("meta"), dict) else {}
    tags = {str(t) for t in raw.get("tags") or [] if isinstance(t, str)}
    if raw.get("id") in canonical:
        tags.add("canonical")
    hidden = "archived" in tags
    tags.discard("archived")
    try:
        if isinstance(meta.get("simlab"), dict):
            record = dict(meta["simlab"], parent=parent, tags=sorted(tags), hidden=hidden)
            record.setdefault("id", str(raw.get("id")))
            return Node.from_record(record)
        generation = meta.get("generation") if isinstance(meta.get("generation"), dict) else {}
        return Node(
            id=str(raw.get("id") or "") or f"loom-{at}",
            parent=parent,
            role="frame" if parent is None else ("model" if meta.get("source") == "AI" else "user"),
            text=raw.get("text", ""),
            origin="imported",
            created=float(meta.get("creation_timestamp") or time.time()),
            model=generation.get("model") if isinstance(generation.get("model"), str) else None,
            tags=frozenset(tags),
            hidden=hidden,
        )
    except (TreeError, TypeError, ValueError) as exc:
        raise SessionError(f"{where}: Loom node at {at} is malformed ({exc})") from None


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
    """Import a Loom JSON tree or a simlab YAML/JSON export as a new session."""
    where = str(path)
    try:
        text = safe_yaml.read_text(path, "a session export", limit=IMPORT_LIMIT)
    except BadInput as exc:
        raise SessionError(str(exc)) from None
    if text.startswith(
        '{"type":"session"'
    ):  # a session file (`/export jsonl`, or one copied out of a folder)
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
                f"{where}: neither JSON nor YAML; expected a Loom tree or a simlab export"
            ) from None
    if isinstance(data, dict) and "simlab_session" in data:
        tree = yaml_to_tree(data, where)
    else:
        tree = loom_to_tree(data, where)
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
    import re

    base = re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).strip("._-")[:80] or "imported"
    name, k = base, 1
    while store.exists(name):
        k += 1
        name = f"{base}-{k}"
    return name
