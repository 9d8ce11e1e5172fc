"""Session trees: immutable nodes, a cursor, and the operations of a branching transcript. No I/O.

A path from a root to a node is a transcript. Edits add a sibling (the original stays), deletes
only hide, and tags are kept per node; every change is a small record a store can append.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import chain
from typing import Any

from simlab.errors import TreeError

ROLES = ("frame", "user", "model", "note")
ORIGINS = ("typed", "sampled", "edited", "replayed", "imported", "chosen")  # chosen: a kept multiverse block


def new_id() -> str:
    return uuid.uuid4().hex


def make_node(parent: str | None, role: str, text: str, **fields: Any) -> Node:
    """A new node with a fresh id (unless one is given)."""
    return Node(id=fields.pop("id", None) or new_id(), parent=parent, role=role, text=text, **fields)


@dataclass(frozen=True)
class Node:
    """One turn (or the frame) with how it came to be. Never changed in place."""

    id: str
    parent: str | None
    role: str
    text: str
    speaker: str | None = None
    origin: str = "typed"
    created: float | None = field(default_factory=time.time)  # None: unknown (an imported file had none)
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()
    top: tuple[Sequence[Sequence], ...] = ()  # per token: (id, text, logprob) of the best alternatives
    params: dict[str, Any] | None = None  # sampling parameters of a sampled node
    seed: int | None = None
    finish_reason: str | None = None
    model: str | None = None
    model_revision: str | None = None
    dtype: str | None = None  # the weights' dtype when sampled (bfloat16 and float32 draw differently)
    weights: str | None = (
        None  # int8 or int4 when the linear layers were quantized (models.quant); None: float
    )
    # How the prompt of a local reply went into the model: pass lengths, -k for k one-token passes
    # (engine.prefix); a replay feeds it the same way, so the last bits of the logits agree.
    prefill: tuple[int, ...] = ()
    persona: str | None = None
    framing: dict[str, Any] | None = None  # on a frame node: how its turns are written (frame.framing)
    # On a reply whose transcript outgrew the context: {"from": first turn the model read, "dropped":
    # turns left out after the frame, "prompt_tokens": what it read} (frame.window.fit_prompt).
    window: dict[str, Any] | None = None
    # On a reply from a server (simlab.engine.remote): its URL, the model it reported, what it honoured.
    backend: dict[str, Any] | None = None
    edited_from: str | None = None
    # On a reply branched at a token (/fork): {"from": the reply, "at": token position, "tokens": how
    # many of token_ids were forced (the rest were sampled with params and seed), "choice": which}.
    forced: dict[str, Any] | None = None
    # On a steered reply (engine.steering): {"terms": [{"vector", "sha256", "strength", "blocks"}, ...],
    # "positions": "all" | "prompt" | "reply"}; replay adds the same vectors again.
    steer: dict[str, Any] | None = None
    # On a node read from a Loom file (session.loom): what the file held that simlab does not use,
    # written back on export as it came.
    loom: dict[str, Any] | None = None
    # On a judge's note (compare.judge): {"metric", "question", "labels", "prompt", "logprobs" (each
    # label's, teacher-forced), "score"}; replay scores the prompt again.
    judged: dict[str, Any] | None = None
    tags: frozenset[str] = frozenset()
    hidden: bool = False

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise TreeError(f"node {self.id}: role {self.role!r} is not one of {', '.join(ROLES)}")
        if self.origin not in ORIGINS:
            raise TreeError(f"node {self.id}: origin {self.origin!r} is not one of {', '.join(ORIGINS)}")
        if self.token_ids and self.logprobs and len(self.token_ids) != len(self.logprobs):
            raise TreeError(f"node {self.id}: {len(self.token_ids)} tokens but {len(self.logprobs)} logprobs")

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict; empty optional fields are left out to keep files small."""
        record = asdict(self)
        record["tags"] = sorted(self.tags)
        record["top"] = [[list(alt) for alt in alts] for alts in self.top]

        def empty(key: str, value: Any) -> bool:
            if key in ("parent", "created"):
                return False  # None is meaningful: a root; a time not known
            if key in ("token_ids", "logprobs", "top", "tags", "prefill"):
                return len(value) == 0
            return value is None or (key == "hidden" and value is False)

        return {k: v for k, v in record.items() if not empty(k, v)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Node:
        """The inverse of to_record; raises TreeError/TypeError/ValueError on a malformed record."""
        # null for a field that is never null (created, origin, tags, ...) means "not given"
        data = {k: v for k, v in record.items() if v is not None or k in _NULLABLE}
        data.setdefault("parent", None)
        unknown = data.keys() - cls.__dataclass_fields__.keys()
        if unknown:
            raise TreeError(f"unknown node field(s) {', '.join(sorted(unknown))}")
        for key, kind in (("id", str), ("role", str), ("text", str)):
            if not isinstance(data.get(key), kind):
                raise TreeError(f"node field {key!r} must be a {kind.__name__}")
        for key, kinds in _OPTIONAL_TYPES.items():
            value = data.get(key)
            if value is not None and (
                not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds
            ):
                names = " or ".join(k.__name__ for k in kinds)
                raise TreeError(f"node field {key!r} must be {names} or null, not {type(value).__name__}")
        # map() keeps the per-element work in C: a 10,000-node session holds ~10^6 alternatives.
        data["token_ids"] = tuple(map(int, data.get("token_ids", ())))
        data["logprobs"] = tuple(map(float, data.get("logprobs", ())))
        prefill = data.get("prefill") or ()
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in prefill):
            raise TreeError("node field 'prefill' must be a list of whole numbers")
        data["prefill"] = tuple(prefill)
        # Alternatives stay as parsed ([id, text, logprob] lists): converting ~10^6 of them
        # would double the load time of a large session, and nothing changes them.
        data["top"] = tuple(data.get("top", ()))
        top = data["top"]  # checked in C-level passes (a Python loop here would add a third to the load)
        flat = list(chain.from_iterable(top)) if top and set(map(type, top)) == _LIST else None
        if top and (
            flat is None or flat and (set(map(type, flat)) != _LIST or set(map(len, flat)) != _THREE)
        ):
            raise TreeError("node field 'top' must hold, per token, a list of [id, text, logprob] triples")
        data["tags"] = frozenset(map(str, data.get("tags", ())))
        return cls(**data)


_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    "parent": (str,),
    "speaker": (str,),
    "origin": (str,),
    "created": (int, float),
    "params": (dict,),
    "seed": (int,),
    "finish_reason": (str,),
    "model": (str,),
    "model_revision": (str,),
    "dtype": (str,),
    "weights": (str,),
    "persona": (str,),
    "framing": (dict,),
    "window": (dict,),
    "backend": (dict,),
    "edited_from": (str,),
    "forced": (dict,),
    "steer": (dict,),
    "loom": (dict,),
    "judged": (dict,),
    "hidden": (bool,),
    "token_ids": (list, tuple),
    "logprobs": (list, tuple),
    "top": (list, tuple),
    "prefill": (list, tuple),
    "tags": (list, tuple),
}


_LIST, _THREE = {list}, {3}
_NULLABLE = {"parent", "created"} | {f.name for f in fields(Node) if f.default is None}


class Tree:
    """Nodes by id, children in creation order, and a cursor (the node the user is at)."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self._children: dict[str | None, list[str]] = {None: []}
        self.cursor: str | None = None
        self.orphans: list[str] = []  # nodes whose parent is missing, kept as extra roots
        self.visited: dict[str, str] = {}  # node id -> the child last visited below it (for "child" moves)
        self.settings: dict = {}  # what the user chose for the chat ({"set": {field: value}, "seed": N})
        self.multiverses: dict[str, list[dict]] = {}  # node id -> its multiverses (session.multiverse)
        self.servers: list = []  # engine.probe.ServerMap: what each server did when probed, in order
        self._short: tuple[int, dict[str, str]] = (-1, {})

    # -- building --------------------------------------------------------------------------
    def add(self, node: Node) -> Node:
        """Insert a node; its parent must exist (or be None for a root)."""
        if node.id in self.nodes:
            raise TreeError(f"node {node.id} already exists")
        parent = node.parent
        if parent is not None and parent not in self.nodes:
            raise TreeError(f"node {node.id}: parent {parent} is not in the tree")
        self.nodes[node.id] = node
        self._children.setdefault(parent, []).append(node.id)
        self._children.setdefault(node.id, [])
        return node

    def add_orphan(self, node: Node) -> Node:
        """Keep a node whose parent is missing as an extra root (it is not dropped)."""
        added = self.add(replace(node, parent=None))
        self.orphans.append(node.id)
        return added

    def add_child(self, parent: str | None, role: str, text: str, **fields: Any) -> Node:
        return self.add(make_node(parent, role, text, **fields))

    def edit(self, node_id: str, text: str) -> Node:
        """A sibling carrying the new text (origin 'edited'); the original stays as it was. Typed
        text has no finish reason: the original's ([length], [stop]) told how its sampling ended."""
        old = self.get(node_id)
        return self.add(
            replace(
                old,
                id=new_id(),
                text=text,
                origin="edited",
                edited_from=old.id,
                created=time.time(),
                finish_reason=None,
                token_ids=(),
                logprobs=(),
                top=(),
                tags=frozenset(),
                loom=_edited_loom(old.loom),
            )
        )

    def set_tag(self, node_id: str, tag: str, on: bool = True) -> Node:
        node = self.get(node_id)
        tags = node.tags | {tag} if on else node.tags - {tag}
        return self._replace(replace(node, tags=frozenset(tags)))

    def set_hidden(self, node_id: str, hidden: bool = True) -> Node:
        """Soft delete (or restore): hidden nodes and their subtrees are skipped in views."""
        return self._replace(replace(self.get(node_id), hidden=hidden))

    def _replace(self, node: Node) -> Node:
        self.nodes[node.id] = node
        return node

    # -- reading ---------------------------------------------------------------------------
    def short(self, node_id: str, least: int = 8) -> str:
        """The shortest prefix of a node's id (at least `least` characters) that names it alone in
        this tree, as git abbreviates commits; /goto, --node and the rest take it back."""
        if self._short[0] != len(self.nodes):  # nodes are only ever added: their count dates the table
            ids = sorted(self.nodes)
            table = {}
            for i, this in enumerate(ids):
                need = least
                for other in ids[max(0, i - 1) : i] + ids[i + 1 : i + 2]:
                    need = max(need, len(os.path.commonprefix([this, other])) + 1)
                table[this] = this[:need]
            self._short = (len(self.nodes), table)
        return self._short[1].get(node_id, node_id[:least])

    def get(self, node_id: str) -> Node:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise TreeError(f"no node {node_id!r} in this session") from None

    def resolve(self, prefix: str) -> Node:
        """A node by id or unique id prefix (as shown, 8 characters)."""
        if prefix in self.nodes:
            return self.nodes[prefix]
        matches = [n for n in self.nodes if n.startswith(prefix)] if prefix else []
        if len(matches) == 1:
            return self.nodes[matches[0]]
        if not matches:
            raise TreeError(f"no node {prefix!r} in this session")
        raise TreeError(f"node id {prefix!r} is ambiguous ({len(matches)} nodes); give more characters")

    @property
    def roots(self) -> list[Node]:
        return [self.nodes[i] for i in self._children[None]]

    def children(self, node_id: str | None, include_hidden: bool = False) -> list[Node]:
        nodes = [self.nodes[i] for i in self._children.get(node_id, [])]
        return nodes if include_hidden else [n for n in nodes if not n.hidden]

    def siblings(self, node_id: str, include_hidden: bool = False) -> list[Node]:
        """The node and its siblings, in creation order."""
        node = self.get(node_id)
        return self.children(node.parent, include_hidden) if not node.hidden else [node]

    def path(self, node_id: str) -> list[Node]:
        """Root first, ending at node_id."""
        out, seen = [], set()
        current: str | None = node_id
        while current is not None:
            if current in seen:
                raise TreeError(f"the parents of node {node_id} form a cycle")
            seen.add(current)
            node = self.get(current)
            out.append(node)
            current = node.parent
        return out[::-1]

    def leaf(self, node_id: str) -> Node:
        """Follow the most recent visible child down from a node."""
        node = self.get(node_id)
        while kids := self.children(node.id):
            node = kids[-1]
        return node

    # -- cursor ----------------------------------------------------------------------------
    def goto(self, node_id: str) -> Node:
        node = self.resolve(node_id)
        self.cursor = node.id
        self.remember(node.id)
        return node

    def remember(self, node_id: str) -> None:
        """Note the path to node_id as the last visited one, so moving to a child retraces it."""
        node = self.nodes.get(node_id)
        seen = set()
        while node is not None and node.parent is not None and node.id not in seen:
            seen.add(node.id)
            self.visited[node.parent] = node.id
            node = self.nodes.get(node.parent)

    def move(self, where: str, include_hidden: bool = False) -> Node:
        """Move the cursor: 'parent', 'child' (the one last visited, else the latest), 'prev' or 'next'
        sibling, among visible nodes (hidden ones too with include_hidden). Raises at an edge."""
        if self.cursor is None:
            raise TreeError("the session is empty")
        node = self.get(self.cursor)
        if where == "parent":
            if node.parent is None:
                raise TreeError("already at the root")
            target = self.get(node.parent)
        elif where == "child":
            kids = self.children(node.id, include_hidden)
            if not kids:
                raise TreeError("nothing below this node")
            last = self.visited.get(node.id)
            target = next((kid for kid in kids if kid.id == last), kids[-1])
        elif where in ("prev", "next"):
            sibs = self.children(node.parent, True) if include_hidden else self.siblings(node.id)
            at = [s.id for s in sibs].index(node.id)
            step = -1 if where == "prev" else 1
            if not 0 <= at + step < len(sibs):
                raise TreeError(f"no {'previous' if step < 0 else 'next'} sibling")
            target = sibs[at + step]
        else:
            raise ValueError(f"unknown move {where!r}")
        self.cursor = target.id
        self.remember(target.id)
        return target


def _edited_loom(loom: dict[str, Any] | None) -> dict[str, Any] | None:
    """An edited copy of a node from a Loom file keeps the file's other keys (its chapter, frame,
    ...), but not what described how the old text was generated, and says it was modified."""
    if not loom or "keys" not in loom:
        return None
    keys = {k: v for k, v in loom["keys"].items() if k != "generation"}
    meta = dict(keys.get("meta") or {}) if isinstance(keys.get("meta"), dict) else {}
    meta.pop("generation", None)
    meta["modified"] = True
    meta["creation_timestamp"] = time.strftime("%Y-%m-%d-%H.%M.%S")  # pyloom's format, as Loom's own edits
    return {**{k: v for k, v in loom.items() if k != "file"}, "keys": {**keys, "meta": meta}}
