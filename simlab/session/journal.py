"""The session file format: one JSON Lines record per change, and how a file becomes a Tree.

Line 1 is a header (`{"type": "session", "schema": N, ...}`); every later line is one change:
a node, a tag, a hide/restore, a cursor move, or the chat's settings (what `/set` and `/seed`
chose). Loading replays the lines into a Tree. A torn
or garbage line is reported with its line number and skipped, never "repaired"; records from older
schemas are upgraded on the way in by numbered, append-only migrations.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from simlab.engine.probe import ServerMap
from simlab.errors import SessionError, TreeError
from simlab.session import multiverse
from simlab.session.tree import Node, Tree

SCHEMA = 9
# Upgrades of records from older schema versions: MIGRATIONS[n] turns a schema-n record into n+1.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: lambda record: record,  # 2 added the optional `framing` of frame nodes; 1 files render as before
    2: lambda record: record,  # 3 added the optional context `window` and `backend` of replies
    3: lambda record: record,  # 4 added the optional `weights` (int8/int4) of replies
    4: lambda record: record,  # 5 added the optional `prefill` (the passes a reply's prompt went in)
    5: lambda record: record,  # 6 added `settings` records (/set and /seed) and replies' `forced` (/fork)
    6: lambda record: record,  # 7 added replies' `steer` (the steering vectors they were sampled with)
    7: lambda record: record,  # 8 added `multiverse` records and the origin "chosen" (a kept block)
    8: lambda record: record,  # 9 added `server` records (engine.probe) and judges' notes' `judged`
}


def header(name: str, **fields: Any) -> dict[str, Any]:
    """The first record of a session file."""
    return {"type": "session", "schema": SCHEMA, "name": name, "created": time.time(), **fields}


def encode(record: dict[str, Any]) -> bytes:
    """One record as a line of the file."""
    return orjson.dumps(record) + b"\n"


def state_records(name: str, tree: Tree) -> list[dict[str, Any]]:
    """Header, every node in parent-first order with its current tags and visibility, and the cursor."""
    records: list[dict[str, Any]] = [header(name)]
    stack = [n.id for n in reversed(tree.roots)]
    while stack:
        node = tree.nodes[stack.pop()]
        records.append({"type": "node", "node": node.to_record()})
        stack.extend(n.id for n in reversed(tree.children(node.id, include_hidden=True)))
    if tree.cursor:
        records.append({"type": "cursor", "id": tree.cursor})
    if tree.settings:
        records.append({"type": "settings", "settings": tree.settings})
    for saved in tree.multiverses.values():
        records.extend({"type": "multiverse", "multiverse": m} for m in saved)
    records.extend({"type": "server", "server": m.as_dict()} for m in tree.servers)
    return records


def load_tree(path: Path) -> tuple[Tree, list[str]]:
    """Replay a session file into a Tree; returns it with the problems found (line by line)."""
    # A large session allocates ~10^6 small lists that all stay alive; with the cyclic GC on,
    # each collection re-walks them all and loading takes several times longer.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_tree(path)
    finally:
        if enabled:
            gc.enable()


def _load_tree(path: Path) -> tuple[Tree, list[str]]:
    tree = Tree()
    problems: list[str] = []
    pending: list[tuple[int, Node]] = []  # nodes whose parent was not (yet) there
    schema = None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SessionError(f"cannot read session file {path}: {exc.strerror}") from None
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = orjson.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:  # orjson.JSONDecodeError is a ValueError
            if schema is None:  # nothing after a damaged header can be read by its schema
                raise SessionError(
                    f"{where}: not a simlab session file (its first line, the session header, "
                    "is not a JSON object)"
                ) from None
            problems.append(f"{where}: unreadable line skipped (a torn write or garbage)")
            continue
        if schema is None:
            if record.get("type") != "session" or not isinstance(record.get("schema"), int):
                raise SessionError(
                    f"{where}: not a simlab session file (no session header on its first line)"
                )
            schema = record["schema"]
            if schema < 1:
                raise SessionError(f"{where}: schema {schema} is not a simlab session schema (1 to {SCHEMA})")
            if schema > SCHEMA:
                raise SessionError(
                    f"{path}: written by a newer simlab (schema {schema}, this one reads up to "
                    f"{SCHEMA}); upgrade simlab to open it. The file was not changed."
                )
            continue
        for version in range(schema, SCHEMA):
            record = MIGRATIONS[version](record)
        try:
            _apply(tree, record, pending, lineno)
        except (TreeError, TypeError, ValueError, KeyError) as exc:
            problems.append(f"{where}: record skipped ({exc})")
    if schema is None:
        raise SessionError(f"{path}: empty or not a simlab session file")
    _place_pending(tree, pending, problems, path)
    if tree.cursor is not None and tree.cursor not in tree.nodes:
        tree.cursor = None
    if tree.cursor is None and tree.nodes:
        tree.cursor = tree.leaf(tree.roots[0].id).id if tree.roots else None
    if tree.cursor is not None:
        tree.remember(tree.cursor)  # moving down retraces the path the session was left on
    return tree, problems


def _place_pending(tree: Tree, pending: list[tuple[int, Node]], problems: list[str], path: Path) -> None:
    """Add nodes whose parent came later in the file (imports write children first), in linear time;
    a node whose parent never came, or whose parents form a cycle, is kept as a separate root."""
    waiting: dict[str, list[tuple[int, Node]]] = {}
    for item in pending:
        waiting.setdefault(item[1].parent, []).append(item)

    def add_with_descendants(lineno: int, node: Node, orphan: str | None) -> None:
        queue = [(lineno, node, orphan)]
        while queue:
            lineno, node, orphan = queue.pop()
            try:
                if orphan is None:
                    tree.add(node)
                else:
                    problems.append(f"{path}:{lineno}: node {node.id[:8]} {orphan}; kept as a separate root")
                    tree.add_orphan(node)
            except TreeError as exc:  # e.g. an id used twice
                problems.append(f"{path}:{lineno}: record skipped ({exc})")
                continue
            queue.extend((ln, child, None) for ln, child in reversed(waiting.pop(node.id, [])))

    for node_id in [n for n in waiting if n in tree.nodes]:
        for lineno, node in waiting.pop(node_id, []):
            add_with_descendants(lineno, node, None)
    waiting_ids = {node.id for items in waiting.values() for _, node in items}
    for parent in [p for p in waiting if p not in waiting_ids]:  # parents that never came
        for lineno, node in waiting.pop(parent, []):
            add_with_descendants(lineno, node, f"refers to missing parent {str(parent)[:8]}")
    by_id = {node.id: (lineno, node) for items in waiting.values() for lineno, node in items}
    while waiting:  # what is left hangs off cycles of parent links: break each cycle at a node on it
        node = waiting[next(iter(waiting))][0][1]
        seen = set()
        while node.id not in seen:  # walk up until the walk repeats: that node is on the cycle
            seen.add(node.id)
            node = by_id[node.parent][1]
        items = waiting[node.parent]
        lineno, node = items.pop(next(i for i, (_, n) in enumerate(items) if n.id == node.id))
        if not items:
            del waiting[node.parent]
        add_with_descendants(lineno, node, "is in a cycle of parent links")


def _apply(tree: Tree, record: dict[str, Any], pending: list, lineno: int) -> None:
    kind = record.get("type")
    fields = {
        "node": ("node", dict),
        "tag": ("id", str),
        "hide": ("id", str),
        "cursor": ("id", str),
        "settings": ("settings", dict),
        "multiverse": ("multiverse", dict),
        "server": ("server", dict),
    }
    if kind in fields:
        key, want = fields[kind]
        if not isinstance(record.get(key), want):
            raise ValueError(
                f"a {kind} record needs {key!r} as a {'JSON object' if want is dict else 'string'}"
            )
    if kind == "node":
        node = Node.from_record(record["node"])
        if node.parent is not None and node.parent not in tree.nodes:
            pending.append((lineno, node))
        else:
            tree.add(node)
    elif kind == "tag":
        tree.set_tag(record["id"], str(record["tag"]), bool(record.get("on", True)))
    elif kind == "hide":
        tree.set_hidden(record["id"], bool(record.get("hidden", True)))
    elif kind == "cursor":
        if record["id"] in tree.nodes:
            tree.cursor = record["id"]
            tree.remember(record["id"])  # each visit, in order: a child is the one last visited
    elif kind == "settings":
        tree.settings = record["settings"]
    elif kind == "multiverse":
        saved = multiverse.check(record["multiverse"])
        tree.multiverses.setdefault(saved["node"], []).append(saved)
    elif kind == "server":
        tree.servers.append(ServerMap.from_dict(record["server"]))
    else:
        raise ValueError(f"unknown record type {kind!r}")
