"""Loom's JSON trees (socketteer/loom, "pyloom"), read as pyloom reads them and written so pyloom
opens them, with nothing of the file lost on the way through simlab.

pyloom keeps a nested tree: `root` with `children`, each node `id`, `text`, `parent_id`, `tags`,
`meta` (`creation_timestamp` as "%Y-%m-%d-%H.%M.%S", `source` prompt/AI/mixed, `generation` with the
API's per-token logprobs, `modified`) and whatever else the version that wrote it kept (`open`,
`visited`, `mutable`, `chapter_id`, `frame`, `multimedia`, `text_attributes`, ...); at the top the
tree's own `tags` table, `chapters`, settings blocks, `model_responses`, `canonical` and
`selected_node_id`. It also opens a bare "simple tree" (`{"text", "children"}` with no `root`) and
a bare list of them (under an empty root), and older files mark nodes with `"bookmark": true`,
`"archived": true`, `"canonical": true` instead of tags.

simlab uses the text, the tree, the tags (archived = hidden), the timestamps and the generation's
logprobs; every other key of a node is kept on the node (`Node.loom`), the file's top-level keys on
its first root (under "file"), and both are written back as they came. A node simlab made itself
carries its own record in `meta.simlab`, so simlab -> Loom -> simlab is exact too.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

from simlab.errors import SessionError, TreeError
from simlab.frame.framing import Framing
from simlab.frame.render import framing_of, render_part
from simlab.session.tokens import token_parts
from simlab.session.tree import Node, Tree

LOOM_ROOT_ID = "simlab-synthetic-root"
PYLOOM_TIME = "%Y-%m-%d-%H.%M.%S"  # pyloom's util.timestamp()
OLD_ATTRIBUTES = ("bookmark", "archived", "canonical")  # pyloom's turn_attributes_into_tags
USED = ("id", "parent_id", "text", "children", "tags", *OLD_ATTRIBUTES)  # keys simlab reads itself
# Node.loom of an imported node: {"keys": the node's other keys as they came, "parent_key": whether it
# wrote parent_id, "tag_order": its tags list, "old": its old-style attributes, "file": on the first
# root, the file's own top-level keys}
FILE_USED = ("root", "canonical", "selected_node_id")
# pyloom's DEFAULT_TAGS: written when the file had no table of its own; icons are pyloom's files
DEFAULT_TAGS = {
    "bookmark": {
        "name": "bookmark",
        "scope": "node",
        "hide": False,
        "show_only": False,
        "toggle_key": "b",
        "icon": "bookmark-black",
    },
    "canonical": {
        "name": "canonical",
        "scope": "ancestry",
        "hide": False,
        "show_only": False,
        "toggle_key": "*",
        "icon": "book-white",
    },
    "archived": {
        "name": "archived",
        "scope": "node",
        "hide": True,
        "show_only": False,
        "toggle_key": "!",
        "icon": "archive-yellow",
    },
}


# -- reading --------------------------------------------------------------------------------------


def loom_to_tree(data: Any, where: str) -> Tree:
    """A Tree from any shape pyloom opens; a wrong shape is a SessionError naming the place."""
    data = _as_tree_file(data, where)
    extra = {k: v for k, v in data.items() if k not in FILE_USED}  # kept on the first root
    if extra or "canonical" in data:
        extra |= {"$order": list(data), "$canonical": data.get("canonical")}
    tree = Tree()
    listed = data.get("canonical") if isinstance(data.get("canonical"), list) else []
    canonical = {i for i in listed if isinstance(i, str)}
    stack: list[tuple[Any, str | None, str]] = [(data["root"], None, "root")]
    while stack:
        raw, parent, at = stack.pop()
        if not isinstance(raw, dict) or not isinstance(raw.get("text", ""), str):
            raise SessionError(f"{where}: Loom node at {at} is not an object with a text string")
        children = raw.get("children", [])
        if not isinstance(children, list):
            raise SessionError(f"{where}: Loom node at {at}: 'children' must be a list")
        if raw.get("id") == LOOM_ROOT_ID:  # simlab's own root above several roots, or a bare list
            stack.extend((c, None, f"{at}.children[{i}]") for i, c in reversed(list(enumerate(children))))
            continue
        node = _node(raw, parent, canonical, at, where)
        if extra and not tree.roots and parent is None:
            node = replace(node, loom={**(node.loom or {}), "file": extra})
        if node.id in tree.nodes:
            raise SessionError(f"{where}: Loom node id {node.id!r} appears twice (at {at})")
        tree.add(node)
        stack.extend((c, node.id, f"{at}.children[{i}]") for i, c in reversed(list(enumerate(children))))
    if not tree.roots:
        raise SessionError(f"{where}: the Loom tree has no nodes")
    selected = data.get("selected_node_id")
    cursor = (
        selected if isinstance(selected, str) and selected in tree.nodes else tree.leaf(tree.roots[0].id).id
    )
    path = tree.path(cursor)
    hidden = next((i for i, node in enumerate(path) if node.hidden), None)
    tree.cursor = path[hidden - 1].id if hidden else cursor  # an archived node: where it hangs, seen
    return tree


def _as_tree_file(data: Any, where: str) -> dict:
    """{"root": ...} as pyloom's load_tree_data makes it: a simple tree becomes the root, a bare list
    the children of an empty root."""
    if isinstance(data, list) and data and all(isinstance(n, dict) and "text" in n for n in data):
        return {"root": {"id": LOOM_ROOT_ID, "text": "", "children": data}}
    if isinstance(data, dict) and "root" not in data and isinstance(data.get("text"), str):
        return {"root": data}
    if not isinstance(data, dict) or not isinstance(data.get("root"), dict):
        raise SessionError(
            f"{where}: not a Loom tree (expected an object with a 'root' node, a node with 'text' "
            "and 'children', or a list of them)"
        )
    return data


def _node(raw: dict, parent: str | None, canonical: set, at: str, where: str) -> Node:
    meta = raw.get("meta") if isinstance(raw.get("meta"), dict) else {}
    tags = (
        [str(t) for t in raw.get("tags") or [] if isinstance(t, str)]
        if isinstance(raw.get("tags"), list)
        else []
    )
    tags += [name for name in OLD_ATTRIBUTES if raw.get(name) is True and name not in tags]
    # canonical by the file's top-level list only (older pyloom), not by a tag
    listed_only = isinstance(raw.get("id"), str) and raw["id"] in canonical and "canonical" not in tags
    if listed_only:
        tags.append("canonical")
    hidden = "archived" in tags
    try:
        if isinstance(meta.get("simlab"), dict):  # a node simlab wrote: its own record
            record = dict(meta["simlab"], parent=parent, tags=sorted(set(tags) - {"archived"}), hidden=hidden)
            record.setdefault("id", str(raw.get("id")))
            return Node.from_record(record)
        node_id = str(raw.get("id") or "") or uuid.uuid4().hex
        loom: dict[str, Any] = {"keys": {k: v for k, v in raw.items() if k not in USED}}
        loom["order"] = list(raw)  # the node's keys in the file's order: export writes them so
        loom["parent_key"] = "parent_id" in raw
        if listed_only:
            loom["canonical_listed"] = True
        if isinstance(raw.get("tags"), list):
            loom["tag_order"] = [t for t in raw["tags"] if isinstance(t, str)]
        if any(name in raw for name in OLD_ATTRIBUTES):
            loom["old"] = [name for name in OLD_ATTRIBUTES if name in raw]
        return Node(
            id=node_id,
            parent=parent,
            role="frame" if parent is None else ("model" if meta.get("source") == "AI" else "user"),
            text=raw.get("text", ""),
            origin="imported",
            created=parse_time(meta.get("creation_timestamp")),
            model=_text(meta.get("generation"), "model"),
            tags=frozenset(set(tags) - {"archived"}),
            hidden=hidden,
            loom=loom,
            **_logprobs(meta.get("generation"), raw.get("text", "")),
        )
    except (TreeError, TypeError, ValueError) as exc:
        raise SessionError(f"{where}: Loom node at {at} is malformed ({exc})") from None


def parse_time(value: Any) -> float | None:
    """pyloom's "2021-09-15-13.02.19" (local time), an ISO string, or epoch seconds; None when
    there is none or it cannot be read (unknown, not the import time)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str) or not value.strip():
        return None
    for parse in (lambda v: datetime.strptime(v, PYLOOM_TIME), datetime.fromisoformat):
        try:
            return parse(value.strip()).timestamp()
        except ValueError:
            continue
    try:
        return float(value)
    except ValueError:
        return None


def _text(data: Any, key: str) -> str | None:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _logprobs(generation: Any, text: str) -> dict[str, Any]:
    """An OpenAI-style `logprobs` block ({tokens, token_logprobs, top_logprobs}) whose tokens spell the
    node's text: the node's per-token log-probabilities and alternatives, for /tokens."""
    block = generation.get("logprobs") if isinstance(generation, dict) else None
    if not isinstance(block, dict):
        return {}
    tokens, values = block.get("tokens"), block.get("token_logprobs")
    if (
        not isinstance(tokens, list)
        or not isinstance(values, list)
        or len(tokens) != len(values)
        or not tokens
    ):
        return {}
    if not all(isinstance(t, str) for t in tokens) or "".join(tokens) != text:
        return {}  # edited after it was generated, or a different text: not this node's tokens
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return {}
    tops = block.get("top_logprobs") if isinstance(block.get("top_logprobs"), list) else []
    top = []
    for i in range(len(tokens)):
        alts = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        ranked = sorted(
            (
                (t, float(lp))
                for t, lp in alts.items()
                if isinstance(lp, (int, float)) and not isinstance(lp, bool)
            ),
            key=lambda a: -a[1],
        )
        top.append(tuple((-1, t, lp) for t, lp in ranked))
    return {
        "logprobs": tuple(float(v) for v in values),
        "top": tuple(top),
        "backend": {"kind": "loom", "tokens": list(tokens)},
    }


# -- writing --------------------------------------------------------------------------------------


def to_loom(tree: Tree) -> dict[str, Any]:
    """The tree as a Loom JSON file (one root; several roots hang under a synthetic one)."""
    roots = [_write(tree, r, framing_of([r])) for r in tree.roots]
    if len(roots) == 1:
        root = roots[0]
    else:
        # pyloom's own empty root (EMPTY_TREE: immutable, visited), so pyloom adds no second one
        root = {"id": LOOM_ROOT_ID, "text": "", "mutable": False, "visited": True, "children": roots}
        for child in roots:
            child["parent_id"] = LOOM_ROOT_ID
    first = tree.roots[0] if tree.roots else None
    saved = dict((first.loom or {}).get("file") or {}) if first is not None else {}
    order, listed = saved.pop("$order", None), saved.pop("$canonical", None)
    imported = first is not None and "keys" in (first.loom or {})
    out: dict[str, Any] = {"root": root}
    if not imported and not saved:  # simlab's own tree: the blocks pyloom writes
        out |= {"chapters": {}, "memories": {}, "summaries": {}, "model_responses": {}}
    out |= saved
    out.setdefault("tags", DEFAULT_TAGS)
    canonical = [n.id for n in tree.nodes.values() if "canonical" in n.tags]
    if isinstance(listed, list):  # the file's list, in its order, ids it names that simlab lacks too
        known = [i for i in listed if not isinstance(i, str) or i not in tree.nodes or i in canonical]
        canonical = known + [i for i in canonical if i not in known]
    out["canonical"] = canonical
    out["selected_node_id"] = tree.cursor
    return _ordered(out, order)


def _ordered(mapping: dict[str, Any], order: list | None) -> dict[str, Any]:
    """The keys in the order a file had them (new ones after)."""
    if not order:
        return mapping
    return {k: mapping[k] for k in order if k in mapping} | {
        k: v for k, v in mapping.items() if k not in order
    }


def _write(tree: Tree, node: Node, framing: Framing) -> dict[str, Any]:
    loom = node.loom or {}
    order, old = loom.get("tag_order"), loom.get("old")
    tags = set(node.tags) | ({"archived"} if node.hidden else set())
    if loom.get("canonical_listed"):
        tags.discard("canonical")  # the file kept it in its top-level list, which still says so
    native = "keys" not in loom  # made by simlab, not read from a Loom file
    out: dict[str, Any] = {"id": node.id}
    if native or "text" in loom.get("order", ("text",)) or node.text:
        parent = tree.get(node.parent) if node.parent is not None else None
        out["text"] = render_part(node, framing, parent, tree.children(node.id, include_hidden=True))
    if native or loom.get("parent_key") or node.parent is not None:
        out["parent_id"] = node.parent
    if order is not None or (old is None and (native or tags)):
        out["tags"] = [t for t in (order or []) if t in tags] + sorted(tags - set(order or []))
    elif old is not None:  # an old file's attributes, as it wrote them
        out |= {name: name in tags for name in old}
        extra = sorted(tags - set(old))
        if extra:
            out["tags"] = extra
    if native:  # simlab's own node: what Loom shows, and simlab's record to come back
        out |= {"open": True, "visited": True, "meta": _meta(node, framing)}
    out |= loom.get("keys") or {}
    out["children"] = [_write(tree, c, framing) for c in tree.children(node.id, include_hidden=True)]
    return _ordered(out, loom.get("order"))


def _meta(node: Node, framing: Framing) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "creation_timestamp": time.strftime(PYLOOM_TIME, time.localtime(node.created))
        if node.created is not None
        else None,
        "source": "AI" if node.role == "model" else "prompt",
        "modified": node.origin == "edited",
        "origin": node.origin,
        "simlab": {k: v for k, v in node.to_record().items() if k != "parent"},
    }
    if node.token_ids or node.logprobs:
        lead = framing.lead() if node.role == "model" and framing.mode == "simulator" else ""
        parts = token_parts(node, lead)  # each token's part of the text, so the tokens spell it
        texts = [part for part, _ in parts] if parts else [alts[0][1] if alts else "" for alts in node.top]
        meta["generation"] = {
            "text": node.text,
            "model": node.model,
            "finish_reason": node.finish_reason,
            "logprobs": {
                "tokens": (node.backend or {}).get("tokens") or texts,
                "token_logprobs": list(node.logprobs),
                "top_logprobs": [{t: lp for _, t, lp in alts} for alts in node.top],
            },
        }
    return meta
